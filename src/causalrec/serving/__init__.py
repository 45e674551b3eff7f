"""Service logic used by bentos/: load a packaged bundle, recommend, fall back for cold start."""
