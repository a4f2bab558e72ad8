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

# A Spark standalone cluster on this machine, from the venv's pyspark (see README, "Running on a Spark cluster").
SPARK_HOME_VENV := $(abspath $(VENV))/lib/python3.11/site-packages/pyspark
CLUSTER_DIR ?= $(abspath cluster-run)
CLUSTER_HOST ?= 127.0.0.1
CLUSTER_PORT ?= 7077
CLUSTER_UI_PORT ?= 8080
CLUSTER_WORKERS ?= 2
WORKER_CORES ?= 1
WORKER_MEMORY ?= 3g
DAEMON = SPARK_HOME=$(SPARK_HOME_VENV) SPARK_LOG_DIR=$(CLUSTER_DIR)/logs SPARK_PID_DIR=$(CLUSTER_DIR) \
	SPARK_IDENT_STRING=twots $(SPARK_HOME_VENV)/sbin/spark-daemon.sh

.PHONY: setup test test-fast lint demo bench compare clean image cluster-up cluster-down

setup: $(STAMP)
	@$(PIP) install -q --no-deps --no-build-isolation -e . >/dev/null
	@$(PY) -m twots.setup_env --spark-defaults $(SPARK_DEFAULTS)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3.11 -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" wheel "setuptools>=61,<70"
	$(PIP) install -q -e ".[dev]"
	@touch $@

# --durations: CI's log lists the slowest tests (the suite must stay under 20 minutes on 2 cores). Two workers, a
# file at a time, the files with slow tests first (tests/conftest.py); TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --doctest-modules \
		tests twots/evaluation/metrics.py

# No Spark session, no training ranks, no MLflow store: the markers of pyproject.toml.
test-fast: setup
	$(PY) -m pytest -q --doctest-modules tests twots/evaluation/metrics.py -m "not spark and not distributed and not mlflow and not slow"

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

cluster-up:
	@test -x $(PY) || { echo "no venv at $(VENV): run make setup first"; exit 1; }
	@mkdir -p $(CLUSTER_DIR)/work
	@$(DAEMON) start org.apache.spark.deploy.master.Master 1 --host $(CLUSTER_HOST) --port $(CLUSTER_PORT) \
		--webui-port $(CLUSTER_UI_PORT) >/dev/null
	@for i in $$(seq 1 $(CLUSTER_WORKERS)); do \
		$(DAEMON) start org.apache.spark.deploy.worker.Worker $$i --cores $(WORKER_CORES) --memory $(WORKER_MEMORY) \
			--work-dir $(CLUSTER_DIR)/work --webui-port 0 spark://$(CLUSTER_HOST):$(CLUSTER_PORT) >/dev/null; \
	done
	@for t in $$(seq 1 60); do \
		alive=$$(curl -s http://$(CLUSTER_HOST):$(CLUSTER_UI_PORT)/json/ | $(PY) -c \
			'import json,sys; print(json.load(sys.stdin).get("aliveworkers", 0))' 2>/dev/null); \
		[ "$$alive" = "$(CLUSTER_WORKERS)" ] && break; sleep 1; \
	done; \
	[ "$$alive" = "$(CLUSTER_WORKERS)" ] || { echo "workers did not register; logs in $(CLUSTER_DIR)/logs"; exit 1; }
	@echo "spark://$(CLUSTER_HOST):$(CLUSTER_PORT) is up: $(CLUSTER_WORKERS) workers x $(WORKER_CORES) core," \
		"$(WORKER_MEMORY); UI http://$(CLUSTER_HOST):$(CLUSTER_UI_PORT), logs $(CLUSTER_DIR)/logs; stop: make cluster-down"

cluster-down:
	@for i in $$(seq 1 $(CLUSTER_WORKERS)); do $(DAEMON) stop org.apache.spark.deploy.worker.Worker $$i; done
	@$(DAEMON) stop org.apache.spark.deploy.master.Master 1

clean:
	rm -rf demo-output compare-output bench-output cluster-run spark-warehouse metastore_db derby.log .pytest_cache .ruff_cache

# The image (docker/Dockerfile) with buildah, as root, on a base built from Debian packages when it is missing
# (docker/base.sh; no registry needed). IMAGE_BASE=python:3.11.11-slim-bookworm builds on the pulled base instead.
# Behind a TLS-intercepting proxy (as here) pip and Maven need this machine's CA bundle and Java truststore: they
# are bind-mounted for the RUN steps only and named by build arguments, so nothing of them lands in the image.
IMAGE ?= localhost/twots:latest
IMAGE_BASE ?= localhost/twots-base:bookworm
HOST_CA ?= /etc/ssl/certs/ca-certificates.crt
HOST_JAVA_CA ?= /etc/ssl/certs/java/cacerts
IMAGE_TRUST = $(if $(wildcard $(HOST_CA)),--volume $(HOST_CA):/run/build-ca/ca.crt:ro \
	--build-arg PIP_CERT=/run/build-ca/ca.crt) \
	$(if $(wildcard $(HOST_JAVA_CA)),--volume $(HOST_JAVA_CA):/run/build-ca/cacerts:ro \
	--build-arg JAVA_TOOL_OPTIONS=-Djavax.net.ssl.trustStore=/run/build-ca/cacerts)
image:
	@case $(IMAGE_BASE) in localhost/*) buildah inspect --type image $(IMAGE_BASE) >/dev/null 2>&1 \
		|| docker/base.sh $(IMAGE_BASE);; esac
	buildah bud --isolation chroot --layers --force-rm --pull=false -f docker/Dockerfile \
		--ignorefile docker/Dockerfile.dockerignore --build-arg BASE_IMAGE=$(IMAGE_BASE) $(IMAGE_TRUST) -t $(IMAGE) .
	@buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' $(IMAGE)
