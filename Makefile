# aitom — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?= dsrf3d
# Two threads unless the caller says otherwise; PyTorch would otherwise oversubscribe small machines.
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
# Idle OpenMP threads sleep instead of spinning: much faster when the cores are shared.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help install test test-full lint demo train evaluate bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install aitom with its dependencies

test: $(STAMP) ## fast test suite (CPU, a few minutes)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

test-full: $(STAMP) ## every test, the slow ones included
	$(PY) -m pytest -q -n 2 tests

lint: $(STAMP) ## ruff check + format check
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

demo: $(STAMP) ## simulate a crowded tomogram, run aitom pipeline on it and score it against the truth
	$(PY) scripts/demo.py --out demo_output

train: $(STAMP) ## train a classifier: make train MODEL=dsrf3d|rb3d|cb3d
	$(VENV)/bin/aitom fit --config configs/classify_$(MODEL).yaml

evaluate: $(STAMP) ## evaluate the last trained classifier on the test split
	$(VENV)/bin/aitom test --config configs/classify_$(MODEL).yaml --ckpt_path last

bench: $(STAMP) ## run every scripts/bench_*.py and collect a Markdown table
	$(PY) scripts/run_benchmarks.py --out bench_results.md

clean: ## remove the virtual environment and outputs
	rm -rf $(VENV) demo_output bench_results.md
