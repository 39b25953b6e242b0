# Geo-R on Ray. Every target bootstraps .venv itself and re-installs only when pyproject.toml changes.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: install lint format test demo clean
DEMO := runs/demo
DEMO_CONFIG ?= tiny
CFG = --config $(DEMO_CONFIG)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
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

# The main job on the embedded default: tiny model, synthetic world, local Ray, local MLflow
# (sqlite under runs/). Each step skips when its output is complete, so a re-run resumes.
demo: install
	@mkdir -p $(DEMO)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/runs/mlflow.db}; export MLFLOW_TRACKING_URI; \
	set -e; \
	$(BIN)/geor make-tiny-model $(CFG) --output $(DEMO)/tiny-model; \
	$(BIN)/geor make-world $(CFG) --output $(DEMO)/world; \
	$(BIN)/geor prepare $(CFG) --manifest $(DEMO)/world/manifest.csv --output $(DEMO)/prepared; \
	$(BIN)/geor sft $(CFG) --data $(DEMO)/prepared --model $(DEMO)/tiny-model --output $(DEMO)/sft; \
	$(BIN)/geor mine-hard $(CFG) --data $(DEMO)/prepared --model $(DEMO)/sft/model --output $(DEMO)/hard; \
	$(BIN)/geor grpo $(CFG) --data $(DEMO)/hard --model $(DEMO)/sft/model --output $(DEMO)/grpo; \
	$(BIN)/geor evaluate $(CFG) --data $(DEMO)/prepared --output $(DEMO)/eval \
	    --model base=$(DEMO)/tiny-model --model sft=$(DEMO)/sft/model --model grpo=$(DEMO)/grpo/model; \
	echo "MLflow: $$MLFLOW_TRACKING_URI  (browse: $(BIN)/mlflow ui --backend-store-uri $$MLFLOW_TRACKING_URI)"

clean:
	rm -rf runs .pytest_cache .ruff_cache
