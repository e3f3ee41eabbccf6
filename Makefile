# tunelab: `make` lists the targets. Everything runs in .venv, which `make install` creates.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= mnist
PORT ?= 5000
EXP ?= experiments/mnist_quick.yaml
TOP ?= 3
SEEDS ?= 3
SERVE_PORT ?= 5001
MODEL ?= tunelab-$(DATASET)

.PHONY: help install data baseline tune validate ui compare confirm export serve services services-stop test test-fast lint fixture bench-overhead bench-pruning bench-engines bench-workers

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/tunelab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $@

install: $(BIN)/tunelab ## create .venv and install tunelab (editable) with its dev tools

data: install ## fetch and verify the dataset (DATASET=mnist|fashion_mnist) into the cache
	@if [ "$(DATASET)" = fashion_mnist ]; then bash scripts/install_fashion_mnist.sh; fi
	$(BIN)/tunelab data --dataset $(DATASET)

baseline: install ## train and record the classic Keras MNIST CNN (12 epochs, ~15 min on 2 cores)
	$(BIN)/tunelab baseline --dataset $(DATASET)

tune: install ## the main job: run (or resume) the sweep of EXP (default experiments/mnist_quick.yaml)
	$(BIN)/tunelab tune $(EXP)

validate: install ## check every experiment and search-space file without running anything
	$(BIN)/tunelab validate experiments/*.yaml search_spaces/*.yaml

compare: install ## the best trials of EXP and its finalists against the baseline (intervals, McNemar)
	$(BIN)/tunelab compare $(EXP) --log

confirm: install ## retrain the TOP configurations of EXP with SEEDS fresh seeds; crown the best mean
	$(BIN)/tunelab confirm $(EXP) --top $(TOP) --seeds $(SEEDS)

export: install ## refit EXP's champion on all training images, export + verify every format, register
	$(BIN)/tunelab export $(EXP)

serve: install ## serve the registered MODEL@champion on http://127.0.0.1:$(SERVE_PORT)/invocations
	PATH="$(CURDIR)/$(BIN):$$PATH" MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///tracking/mlflow.db} \
	  $(BIN)/mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local \
	  --host 127.0.0.1 --port $(SERVE_PORT)

services: install ## start PostgreSQL + an MLflow server on 127.0.0.1 (installs PostgreSQL if needed)
	bash scripts/services.sh start
	@echo "now: source tracking/services/env   (then tunelab tune EXP --workers N)"

services-stop: ## stop the PostgreSQL and MLflow servers of `make services`
	bash scripts/services.sh stop

ui: install ## MLflow UI on http://127.0.0.1:$(PORT) against the default store
	$(BIN)/tunelab ui --port $(PORT)

test: install ## the whole suite, slow tests included (installs PostgreSQL and Chromium if missing)
	bash scripts/services.sh install
	bash scripts/install_browser.sh
	$(BIN)/python -m pytest

test-fast: install ## run the tests without the slow end-to-end ones
	$(BIN)/python -m pytest -m "not slow"

schema: install ## write the JSON Schemas of experiment and search-space files (schemas/)
	$(BIN)/python -c "from tunelab.define.schema import write_schemas; print(*write_schemas())"

lint: install ## ruff and mypy (strict)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

fixture: install ## rebuild tests/fixtures/mnist_tiny.npz from the verified full MNIST
	$(BIN)/python scripts/make_fixture.py

bench-overhead: install ## tunelab's tracked training vs a bare model.fit (prints the ratio)
	$(BIN)/python benchmarks/overhead.py

bench-pruning: install ## the same sampler with and without pruning (prints the epoch ratio)
	$(BIN)/python benchmarks/pruning.py

bench-engines: install ## Optuna vs KerasTuner on the same space, data and wall-clock budget
	$(BIN)/python benchmarks/engines.py

bench-workers: install ## trials per minute with 1, 2 and 4 workers (starts its own services)
	$(BIN)/python benchmarks/workers.py
