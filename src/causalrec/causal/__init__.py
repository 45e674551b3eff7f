"""Propensities, debiasing losses, uplift learners (the recommender's causal models), and the
analyst's causal toolkit: graph (spec, identification, testable implications), effects (doubly
robust and linear SEM estimates with intervals, mediation), refute, analysis (the four steps), report."""
