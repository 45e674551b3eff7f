"""Test-session set-up: isolated Prefect/BentoML homes, one Prefect harness, tiny encoder, tmp projects."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="causalrec-tests-"))
# Set before prefect/bentoml are imported anywhere in the session.
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["BENTOML_HOME"] = str(_SESSION_HOME / "bentoml")
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.pop("PREFECT_API_URL", None)
if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs two workers on two cores: one thread each,
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # for torch here and in every stage/server started
sys.path.insert(0, str(REPO / "benchmarks"))  # benchmark scripts some tests import (closed_loop, coat, reliability, serving_load)


# The most the suite holds in the temp directory at once (`make test`, sampled every 2 s: 0.15 GB), with
# room for what other processes on a shared disk write meanwhile.
DISK_NEEDED_GB = 0.5


def pytest_configure(config):
    """A disk too full for the suite is said once, before any test: the landing CI, on a shared disk with
    a few MB left, failed 98 set-ups and 6 tests with scattered `No space left on device` errors."""
    free_gb = shutil.disk_usage(_SESSION_HOME).free / 1e9
    if free_gb < DISK_NEEDED_GB and "PYTEST_XDIST_WORKER" not in os.environ:
        raise pytest.UsageError(f"{free_gb:.2f} GB free on the disk of {_SESSION_HOME.parent}; "
                                f"the test suite needs about {DISK_NEEDED_GB} GB there")


def pytest_unconfigure(config):
    """The session's Prefect and BentoML homes end with it (one per pytest process, up to 20 MB each:
    they were left in the temp directory by every run)."""
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after `-m "not slow"` has deselected
def pytest_collection_modifyitems(items):
    """Modules with the most slow tests first, then the most tests: pytest-xdist (`--dist loadfile
    --no-loadscope-reorder`, the Makefile) hands modules to its two workers in this order, so the long
    modules start at once and the short ones fill in around them. xdist's own order (by test count)
    started the DVC and benchmark modules (1 and 6 tests, 54 s and 95 s) last: 205 s of two workers'
    time where 190 s suffice (the durations of one `make test`)."""
    slow, count = Counter(), Counter()
    for item in items:
        count[item.path] += 1
        slow[item.path] += item.get_closest_marker("slow") is not None
    items.sort(key=lambda item: (-slow[item.path], -count[item.path]))  # stable: a module's order stays


SMALL = {"n_users": 120, "n_items": 80, "n_interactions": 6000, "n_topics": 6, "n_test_pairs_per_user": 10}


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def prefect_events(request):
    """Prefect's `asserting_events_worker` (prefect.testing.fixtures): every event the code emits, kept for
    the test to read. That module joins as a plugin on first use rather than being imported by a test
    module, which every pytest process did while collecting (3.4 s each, also under `-m "not slow"`)."""
    plugins = request.config.pluginmanager
    if not plugins.has_plugin("prefect_fixtures"):
        import prefect_fixtures

        plugins.register(prefect_fixtures, "prefect_fixtures")
    return request.getfixturevalue("asserting_events_worker")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A random-initialised 2-layer BERT with the MiniLM tokenizer: fast, offline, deterministic."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from causalrec.text import default_model_path

    out = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_params(root: Path, **sections) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(SMALL)
    # The learners' own tests cover `auto` and the bootstrap; projects here test the system around them.
    params["train"].update({"epochs": 5, "dim": 8, "exposure_weight": 0.0})
    params["uplift"].update({"learner": "shared", "n_bootstrap": 2, "exposure_weight": 0.0})
    params["analyze"]["placebo_simulations"] = 19  # the refuter's own test uses more
    params["analyze"]["nuisance"] = "logistic"  # tests/test_causal_analysis.py tests "auto" (boosted trees, ~3 s a run)
    for section, values in sections.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:
            params[section] = values
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def make_project(root: Path, tiny_encoder: Path | None = None, git: bool = True, **sections) -> Path:
    """A fresh causalrec project (git + DVC + local remote) with small sizes, like a user's clone."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    for name in ("bentos", "src", "graphs"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if tiny_encoder is not None:
        sections.setdefault("embed", {})["model_path"] = str(tiny_encoder)
    write_params(root, **sections)
    if git:
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
        shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
        # a clone has a commit: the registry records the code version (git sha) of each model
        subprocess.run(["git", "-c", "user.name=causalrec-tests", "-c", "user.email=tests@causalrec.invalid", "add", "-A"],
                       cwd=root, check=True)
        subprocess.run(["git", "-c", "user.name=causalrec-tests", "-c", "user.email=tests@causalrec.invalid", "commit",
                        "-qm", "a fresh clone"], cwd=root, check=True)
    return root


@pytest.fixture
def project(tmp_path, tiny_encoder) -> Path:
    return make_project(tmp_path / "project", tiny_encoder)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_encoder):
    """A real serving bundle from the pipeline stages (no Prefect/BentoML needed), and its params.
    Shared: copy it before changing it."""
    from causalrec import pipeline
    from causalrec.config import load_params

    root = make_project(tmp_path_factory.mktemp("bundle") / "p", tiny_encoder, git=False,
                        train={"models": ["popularity", "tt_naive"], "epochs": 4, "dim": 8}, uplift={"n_bootstrap": 2})
    params = load_params(root / "params.yaml")
    for stage in ("ingest", "embed", "propensity", "train", "evaluate", "analyze"):
        pipeline.STAGES[stage](params)
    out = root / "bundle"
    out.mkdir()
    pipeline.write_bundle(params, "tt_naive", out)
    return out, params
