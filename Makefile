# tinytrain: `make help` lists the targets. The first target that needs Python sets up .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 5000
SERVER_PORT ?= 5001
SCHEDULER_PORT ?= 8786
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup sweep one-step test ui server cluster cluster-stop bench lint clean clean-store

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# torch first, from the pinned CPU build (a plain `torch` would pull a CUDA build of several GB), then the
# project with its test extra. Re-done only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check 'torch==2.13.0'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install tinytrain (done by the other targets when needed)

sweep: $(STAMP) ## Run the default sweep (experiments/optimizer-grid.toml) into mlruns/; ARGS='--set steps=10'
	$(BIN)/tinytrain sweep $(ARGS)

one-step: $(STAMP) ## The blog's one-step Adam measurement over ten seeds, as a before -> after table
	$(BIN)/tinytrain sweep experiments/one-step-adam.toml --quiet
	$(BIN)/tinytrain compare --experiment one-step-adam --before-after

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest $(ARGS)

ui: $(STAMP) ## The MLflow UI on mlruns/ at http://127.0.0.1:5000 (PORT=...; Ctrl-C stops it)
	$(BIN)/tinytrain ui --port $(PORT)

server: $(STAMP) ## An mlflow server on mlruns/ at http://127.0.0.1:5001 (SERVER_PORT=...) to log to over HTTP
	$(BIN)/tinytrain ui --port $(SERVER_PORT)

cluster: $(STAMP) ## A local Dask scheduler and two workers on 127.0.0.1 (make cluster-stop ends them)
	$(BIN)/tinytrain cluster --port $(SCHEDULER_PORT) --workers 2

cluster-stop: $(STAMP) ## Stop the cluster that make cluster started
	$(BIN)/tinytrain cluster --stop

bench: $(STAMP) ## Side-by-side benchmark: tracking overhead, naive MLflow script, vmap engine and its bound
	$(BIN)/python benchmarks/bench.py $(ARGS)
	$(BIN)/python benchmarks/batched_kernels.py

lint: $(STAMP) ## ruff over the code
	$(BIN)/ruff check tinytrain tests benchmarks

clean: ## Remove .venv and caches (the store mlruns/ stays: make clean-store)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-store: ## Delete every run in mlruns/ (asks first)
	@printf 'Delete all runs in mlruns/? [y/N] ' && read answer && [ "$$answer" = y ] && \
	  find mlruns -mindepth 1 ! -name .gitignore -exec rm -rf {} + || echo kept
