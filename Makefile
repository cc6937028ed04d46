# tinytrain: `make help` lists the targets. The first target that needs Python sets up .venv by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PORT ?= 5000
SERVER_PORT ?= 5001
SCHEDULER_PORT ?= 8786
DOCS_PORT ?= 8000
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup sweep one-step digits recipe test ui server team-server cluster cluster-stop bench lint docs docs-serve lock clean clean-store

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

PIP = -m pip install -q --disable-pip-version-check
# torch first, from the pinned CPU build (a plain `torch` would pull a CUDA build of several GB), then the
# exact versions of requirements.lock, then the project itself. Re-done when pyproject.toml or the lock change.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) 'torch==2.13.0'
	$(BIN)/python $(PIP) -r requirements.lock
	$(BIN)/python $(PIP) --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install tinytrain (done by the other targets when needed)

sweep: $(STAMP) ## Run the default sweep (experiments/optimizer-grid.toml) into mlruns/; ARGS='--set steps=10'
	$(BIN)/tinytrain sweep $(ARGS)

one-step: $(STAMP) ## The blog's one-step Adam measurement over ten seeds, as a before -> after table
	$(BIN)/tinytrain sweep experiments/one-step-adam.toml --quiet
	$(BIN)/tinytrain compare --experiment one-step-adam --before-after

digits: $(STAMP) ## The digits grid (real images, 54 runs x 300 steps, a few minutes), then its test-accuracy table
	$(BIN)/tinytrain sweep experiments/digits-grid.toml --quiet $(ARGS)
	$(BIN)/tinytrain compare --experiment digits-grid --metric test_accuracy

recipe: $(STAMP) ## The recipe grid (digits: constant vs warmup-cosine, weight decay 0/0.01, each optimizer its own lrs; 48 runs, a few minutes), then its validation and test tables
	$(BIN)/tinytrain sweep experiments/recipe-grid.toml --quiet --jobs 2 $(ARGS)
	$(BIN)/tinytrain compare --experiment recipe-grid --metric val_accuracy
	$(BIN)/tinytrain compare --experiment recipe-grid --metric test_accuracy

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest $(ARGS)

# mutmut over tinytrain/spec/experiment.py, report.py, stats.py and verify.py ([tool.mutmut] in pyproject.toml) with only the fast tests
# that cover them, at low priority, two at a time; then the score per module (target 85 %, tests/mutation_score.py)
# and every survivor. Results are kept in mutants/: a second run re-tests only what changed.
mutation: $(STAMP) ## Mutation testing of spec, report, stats and verify with the fast tests (about 25 min; score per module)
	XDG_CACHE_HOME=$(CURDIR)/mutants/.cache nice -n 10 $(BIN)/mutmut run --max-children 2
	$(BIN)/python tests/mutation_score.py --survivors

ui: $(STAMP) ## The MLflow UI on mlruns/ at http://127.0.0.1:5000 (PORT=...; Ctrl-C stops it)
	$(BIN)/tinytrain ui --port $(PORT)

server: $(STAMP) ## An mlflow server on mlruns/ at http://127.0.0.1:5001 (SERVER_PORT=...) to log to over HTTP
	$(BIN)/tinytrain ui --port $(SERVER_PORT)

team-server: $(STAMP) ## A team's mlflow server on PostgreSQL: DATABASE_URL=postgresql+psycopg://USER:PW@HOST/DB (SERVER_PORT, ARGS)
	$(BIN)/tinytrain server "$(DATABASE_URL)" --port $(SERVER_PORT) $(ARGS)

cluster: $(STAMP) ## A local Dask scheduler and two workers on 127.0.0.1 (make cluster-stop ends them)
	$(BIN)/tinytrain cluster --port $(SCHEDULER_PORT) --workers 2

cluster-stop: $(STAMP) ## Stop the cluster that make cluster started
	$(BIN)/tinytrain cluster --stop

# SCALE=1 adds benchmarks/scale.py: the 10,000 x 10 sweep (one round: the plain loop and 4 sweeps, 25-37 min)
# and the 1,000 x 100 sweep (two rounds: the plain loop and 5 sweeps, about 10 min), each goal judged at the end:
# about 40 min, estimated from 60- and 600-run sweeps measured here at load 2-3 (docs/performance.md, 2026-12-06);
# the rest of make bench about 35 min (estimated from its parts' earlier figures): about 75 min in all.
# SCALE_ARGS passes options to it, e.g. SCALE_ARGS='--only 10k --variant vmap-none-w2' or '--repeat-10k 2'.
bench: $(STAMP) ## Side-by-side benchmark: tracking overhead, naive MLflow script, vmap engine and its goal (2x the sequential sweep), the Python API loading a 1,000-run sweep, halving and search against the full grid, the writer's cost of each record policy (about 35 min); SCALE=1 adds the 10,000 x 10 and 1,000 x 100 sweeps against the plain loop per engine, record and writers, with their goals (about 40 min more, 75 in all)
	$(BIN)/python benchmarks/bench.py $(ARGS)
	$(BIN)/python benchmarks/batched_kernels.py
	$(BIN)/python benchmarks/api_load.py
	$(BIN)/python benchmarks/budget.py
	$(BIN)/python benchmarks/records.py
	$(if $(SCALE),$(BIN)/python benchmarks/scale.py $(SCALE_ARGS))

lint: $(STAMP) ## ruff (check and format) over the code, and the import contract (pyproject.toml: arrows one way, no cycles)
	$(BIN)/ruff check tinytrain tests benchmarks docs/hooks.py
	$(BIN)/ruff format --check tinytrain tests benchmarks docs/hooks.py
	$(BIN)/lint-imports

# NO_MKDOCS_2_WARNING: mkdocs-material's banner about its end of life (May 2027; Zensical succeeds it).
docs: $(STAMP) ## Build the documentation site (docs/, mkdocs.yml) into site/; any warning is an error
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP) ## The documentation at http://127.0.0.1:8000, rebuilt on every change (DOCS_PORT=...)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

# A fresh environment from pyproject.toml alone (torch first, as above; the package and its development
# groups test, lint and docs), frozen: the versions `make test`
# then installs everywhere. Run it after changing the dependencies, then run the suite and commit both.
LOCK_VENV := .lock-venv
lock: ## Refresh requirements.lock from pyproject.toml (a fresh environment, frozen)
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python $(PIP) 'pip>=25.1'  # dependency groups: pip install --group
	$(LOCK_VENV)/bin/python $(PIP) 'torch==2.13.0'
	$(LOCK_VENV)/bin/python $(PIP) -e . --group dev
	{ echo "# The exact versions the suite passed with: made by make lock from pyproject.toml, installed by make."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	rm -rf $(LOCK_VENV)

clean: ## Remove .venv, caches and the built docs (the store mlruns/ stays: make clean-store)
	rm -rf $(VENV) $(LOCK_VENV) site mutants .pytest_cache .ruff_cache .import_linter_cache *.egg-info build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-store: ## Delete every run in mlruns/ (asks first)
	@printf 'Delete all runs in mlruns/? [y/N] ' && read answer && [ "$$answer" = y ] && \
	  find mlruns -mindepth 1 ! -name .gitignore -exec rm -rf {} + || echo kept
