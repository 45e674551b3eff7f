"""Prefect's own test fixtures this suite uses, as a pytest plugin that conftest's `prefect_events`
registers when a test first needs it (importing prefect.testing.fixtures takes about 3 s). Only the
fixtures named here: registering that module itself would apply its autouse fixtures to every later test."""
from prefect.testing.fixtures import asserting_events_worker  # noqa: F401
