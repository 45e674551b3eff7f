"""Data contract, sources (simulator, Coat, Open Bandit, parquet) and splits."""
