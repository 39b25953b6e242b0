# Geo-R on Ray. Every target bootstraps .venv itself and re-installs only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install lint format test test-fast demo demo-looks clean
DEMO_CONFIG ?= demo

# uv resolves and installs the same pins as pip in about 1.5 min instead of about 5. Bytecode is
# written as modules are first imported, not compiled for all 25k files at install (31 s): every
# target runs with PYTHONDONTWRITEBYTECODE unset, since a machine that sets it would otherwise
# recompile torch, transformers and Ray in every Ray worker.
# uv does not read pip's config, so a wheel folder pip is told about (PIP_FIND_LINKS or pip.conf's
# find-links, e.g. a CPU build of torch) is passed on.
PIP_LINKS = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
FIND_LINKS = $(if $(PIP_LINKS),--find-links $(PIP_LINKS))

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(FIND_LINKS) -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest --durations=15

# The quick loop: everything but the tests marked slow (those that need the shared SFT checkpoint, and the two-node job).
test-fast: lint
	$(BIN)/pytest -m "not slow" --durations=10

# The main job on the embedded default: tiny model, synthetic world, local Ray, a local MLflow
# server (sqlite under runs/demo/mlflow, left running for browsing). A re-run skips finished stages.
demo: install
	$(BIN)/geor demo --config $(DEMO_CONFIG)

# The world where GRPO has something to win (configs/looks.yaml, the GRPO-vs-SFT protocol's
# settings): about 17 minutes on 2 cores, in its own folder with its own MLflow server (port 5001).
demo-looks: install
	$(BIN)/geor demo --config looks --output runs/demo-looks --mlflow-port 5001

clean:
	rm -rf runs .pytest_cache .ruff_cache
