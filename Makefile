# AISDiff: the two commands are `make demo` and `make test` (both run `make setup` first).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.aisdiff-setup
DEMO_DIR ?= work_dirs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# Re-run the (idempotent) setup script only when the pinned dependencies or the script change.
$(STAMP): pyproject.toml scripts/setup_env.sh
	VENV=$(VENV) bash scripts/setup_env.sh
	@touch $@

# The main job on the synthetic benchmark and the tiny model; outputs in $(DEMO_DIR) (see scripts/demo.sh).
demo: setup
	DEMO_DIR=$(DEMO_DIR) VENV=$(VENV) bash scripts/demo.sh

# pytest exits 5 when it collects no test: make treats that (like any failure) as an error.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check priors pipeline segmenter tests benchmarks

# Speed and memory tables (printed; not tests). See benchmarks/results/README.md.
bench: setup
	$(PY) -m benchmarks.diffsp_speed
	$(PY) -m benchmarks.precompute_speed
	$(PY) -m benchmarks.segmenter_speed

clean:
	rm -rf $(VENV) work_dirs .pytest_cache .ruff_cache
