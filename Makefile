# Two commands do everything on a fresh machine: `make study` and `make test` (see README.md).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: study extended test dashboard setup data-source browser-deps postgres-deps tracking-server tracking-server-stop lint

study: setup data-source
	dvc repro

# The extended study (experiments/extended.yaml, on Ray): its pipeline is written from dvc.yaml into extended/dvc.yaml
# (not committed), its results land in extended/results/. Not run by `make study` or `make test`; see README.
extended: setup data-source
	$(PY) extended/pipeline.py
	dvc repro extended/dvc.yaml

test: setup data-source browser-deps postgres-deps
	$(PY) -m pytest

# Imports the committed results/ into the store first when it lacks them (study import-results), then serves it.
dashboard: setup
	$(PY) -m study dashboard

lint: setup
	$(VENV)/bin/ruff check src tests

setup: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

# torch/torchvision first, pinned: these are the releases pip can take offline here (CPU machines run the CPU path).
$(STAMP): pyproject.toml | $(PY)
	@echo "setup 1/3: pip"
	$(PY) -m pip install --quiet --upgrade pip
	@echo "setup 2/3: torch and torchvision (about 5.5 GB unpacked: the CUDA build, which also runs on the CPU; 1-2 min)"
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	@echo "setup 3/3: the study and its dependencies (mlflow, dvc, ray, pandas, seaborn...; 1-2 min)"
	$(PY) -m pip install --quiet -e '.[dev]'
	@echo "setup: done ($$(du -sh $(VENV) | cut -f1) in $(VENV))"
	touch $@

# Fashion-MNIST's IDX files: STUDY_DATA_DIR when set, else Debian's dataset-fashion-mnist package.
data-source:
	@if [ -n "$$STUDY_DATA_DIR" ]; then echo "data: using STUDY_DATA_DIR=$$STUDY_DATA_DIR"; \
	elif [ -f $(FASHION)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "data: installing Debian's dataset-fashion-mnist"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "data: Fashion-MNIST not found. Run 'sudo apt-get install dataset-fashion-mnist', or put the four"; \
	  echo "      IDX files (train-images-idx3-ubyte.gz, ...) in a directory and set STUDY_DATA_DIR to it."; exit 1; fi

# A team's MLflow tracking server: PostgreSQL with its data in .tracking/pg (ignored by git, never a DVC output) and
# `mlflow server` on it, both on 127.0.0.1; prints the MLFLOW_TRACKING_URI to export. Ports: STUDY_TRACKING_PORT
# (5001), STUDY_PG_PORT (5433). As root, PostgreSQL runs as STUDY_PG_USER (nobody).
TRACKING := .tracking
tracking-server: setup postgres-deps
	@$(PY) -m study tracking-server start $(TRACKING)

tracking-server-stop: setup
	@$(PY) -m study tracking-server stop $(TRACKING)

# PostgreSQL's initdb/pg_ctl for the tracking server and the cluster tests (pytest -m cluster).
postgres-deps:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "tracking server: installing Debian's postgresql"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "tracking server: PostgreSQL not found; install Debian's postgresql package (cluster tests skip)"; fi

# Headless Chromium for the browser tests (pytest -m browser).
browser-deps:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "browser tests: installing Debian's chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "browser tests: chromium not found; install Debian's chromium package to run them"; fi
