"""Service logic used by the BentoML services (causalrec.service): load a packaged bundle, recommend, fall back for cold start."""
