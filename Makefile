# tunelab: `make` lists the targets. Everything runs in .venv, which `make install` creates.
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATASET ?= mnist
PORT ?= 5000
EXP ?= experiments/mnist_quick.yaml
HOUR ?= experiments/mnist_hour.yaml
BUDGET ?= 1h
TOP ?= 3
SEEDS ?= 3
SERVE_PORT ?= 5001
DASHBOARD_PORT ?= 8080
MODEL ?= tunelab-$(DATASET)
# the locked runtime: TensorFlow's CPU build (never looks for CUDA); GPU machines use the gpu extra
LOCK ?= requirements/cpu.lock
# make test's parallel pytest processes (pytest-xdist; tests sharing servers stay in one of them)
TEST_WORKERS ?= 3

.PHONY: help install dev data baseline tune example champion validate ui dashboard compare confirm export serve services services-stop test test-fast lint schema lock clean fixture bench-overhead bench-pruning bench-engines bench-workers bench-hour bench-peers bench-search-value

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/tunelab: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

$(BIN)/pytest: $(BIN)/tunelab requirements/dev.lock
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	@touch $@

install: $(BIN)/tunelab ## create .venv and install tunelab from the lock file (hashes checked)

install-gpu: ## the same with TensorFlow's CUDA build (machines with an NVIDIA GPU)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[gpu,export,services,dashboard]'

dev: $(BIN)/pytest ## add the test and lint tools (locked too)

data: install ## fetch and verify the dataset (DATASET=mnist|fashion_mnist) into the cache
	@if [ "$(DATASET)" = fashion_mnist ]; then bash scripts/install_fashion_mnist.sh; fi
	$(BIN)/tunelab data --dataset $(DATASET)

baseline: install ## train and record the classic Keras MNIST CNN (12 epochs, ~14 min on 2 cores)
	$(BIN)/tunelab baseline --dataset $(DATASET)

tune: install ## the main job: run (or resume) the sweep of EXP (default experiments/mnist_quick.yaml)
	$(BIN)/tunelab tune $(EXP)

example: install ## a user project: your own model factory on your own image folder (examples/digits)
	$(BIN)/python examples/digits/make_digits.py
	$(BIN)/tunelab run examples/digits/experiment.yaml --budget 6m

champion: install ## search, confirm and export HOUR's champion within BUDGET (tunelab run; resumes)
	$(BIN)/tunelab run $(HOUR) --budget $(BUDGET)

validate: install ## check every experiment and search-space file (loads their data) without training
	bash scripts/install_fashion_mnist.sh
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

ui: install ## MLflow UI on http://127.0.0.1:$(PORT); prints the link to EXP's runs, best first
	$(BIN)/tunelab ui $(EXP) --port $(PORT)

dashboard: install ## optuna-dashboard on http://127.0.0.1:$(DASHBOARD_PORT): EXP's study, live
	$(BIN)/tunelab dashboard $(EXP) --port $(DASHBOARD_PORT)

test: dev ## the whole suite, slow tests included (installs PostgreSQL, Chromium, strace if missing)
	bash scripts/services.sh install
	bash scripts/install_test_tools.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: dev ## run the tests without the slow end-to-end ones
	$(BIN)/python -m pytest -m "not slow"

lint: dev ## ruff and mypy (strict)
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/mypy

schema: install ## write the JSON Schemas (schemas/) and the README's key reference from the models
	$(BIN)/python -c "from tunelab.define.schema import write_schemas; print(*write_schemas())"
	$(BIN)/python -c "from pathlib import Path; from tunelab.define.reference import write_into; write_into(Path('README.md'))"

lock: ## recompile the lock files from pyproject.toml (pip-tools, hashes; needs the network)
	$(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet pip-tools
	.lockenv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-header \
	  --extra cpu --extra export --extra services --extra dashboard -o requirements/cpu.lock pyproject.toml
	.lockenv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-header \
	  --extra cpu --extra export --extra services --extra dashboard --extra dev \
	  -c requirements/cpu.lock -o requirements/dev.lock pyproject.toml
	rm -rf .lockenv

clean: ## remove build and test leftovers (keeps .venv, tracking/ and the data cache)
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache report.html
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

fixture: install ## rebuild tests/fixtures/mnist_tiny.npz from the verified full MNIST
	$(BIN)/python scripts/make_fixture.py

bench-overhead: install ## images/s of tunelab's tracked training vs a bare model.fit (ratio)
	$(BIN)/python benchmarks/overhead.py

bench-pruning: install ## the same sampler with and without pruning (images seen, best value)
	$(BIN)/python benchmarks/pruning.py

bench-engines: install ## Optuna vs KerasTuner on the same space, data and wall-clock budget
	$(BIN)/python benchmarks/engines.py

bench-workers: dev ## trials per minute with 1, 2, 4 and 8 workers on PostgreSQL and through the gRPC proxy (starts its own services)
	$(BIN)/python benchmarks/workers.py

bench-peers: data ## make tune's sweep vs the KerasTuner and Optuna tutorials at 300 s and 600 s
	$(BIN)/python benchmarks/peers.py --budgets 300,600

bench-search-value: data ## TPE with screens vs random search vs KerasTuner's Hyperband, 3 seeds of 20 min each (~3.5 h; continues where it stopped)
	$(BIN)/python benchmarks/search_value.py --budget 20m --seeds 3

bench-hour: install ## `make champion` with a 60-minute budget from a clean store; the README's table
	$(BIN)/python benchmarks/hour.py --budget 60m
