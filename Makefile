# twots: `make setup` builds the venv once (idempotent), `make test` (everything), `make test-fast` (the torch-only
# lane), `make lint`, `make demo`, `make bench`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.twots-setup-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
SPARK_DEFAULTS = $(VENV)/lib/python3.11/site-packages/pyspark/conf/spark-defaults.conf
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(VENV))/bin/python
export PYSPARK_DRIVER_PYTHON := $(abspath $(VENV))/bin/python
export PYTHONUNBUFFERED := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)
DATA ?= ../shared/data

.PHONY: setup test test-fast lint demo bench compare clean

setup: $(STAMP)
	@$(PIP) install -q --no-deps --no-build-isolation -e . >/dev/null
	@$(PY) -m twots.setup_env --spark-defaults $(SPARK_DEFAULTS)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" wheel "setuptools>=61,<70"
	$(PIP) install -q -e ".[dev]"
	@touch $@

test: setup
	$(PY) -m pytest -q tests

# No Spark session, no training ranks, no MLflow store: the markers of pyproject.toml.
test-fast: setup
	$(PY) -m pytest -q tests -m "not spark and not distributed and not mlflow and not slow"

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) -m experiments.demo --data $(DATA)/ml-latest-small --output demo-output

compare: setup
	$(PY) jobs/compare.py --source movielens --input $(DATA)/ml-latest-small --output compare-output --models all

bench: setup
	$(PY) bench/prepare.py
	$(PY) bench/train.py
	$(PY) bench/serve.py

clean:
	rm -rf demo-output compare-output bench-output spark-warehouse metastore_db derby.log .pytest_cache .ruff_cache
