"""Prefect flows (retrain, monitor): thin shells over causalrec.pipeline. prefect.yaml's entrypoints
are the files in the project's flows/ directory, which import these."""
