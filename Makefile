# resexp: make install, then make test / make demo / make tb. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CIFAR-10: the local copy beside the checkout if there is one, else data/ (downloaded on first use).
DATA ?= $(if $(wildcard ../shared/data/cifar10.npz),../shared/data,data)
DOWNLOAD := $(if $(wildcard $(DATA)/cifar10.npz $(DATA)/cifar-10-batches-py),,data.download=true)
EXTRA ?=

.PHONY: help install test test-all lint format demo analyze bench tb notebook clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(BIN)/resexp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@touch $@

install: $(BIN)/resexp  ## create .venv and install resexp with its test tools (pip install -e .[dev])

# PYTHONDONTWRITEBYTECODE= : containers often set it, and then every pytest worker and every process a test
# starts compiles resexp (and rewrites the test modules) again; the suite lets Python keep its bytecode.
test: install  ## run the test suite (fast tests; slow and GPU tests are deselected), on 2 workers
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n 2 --dist loadfile --durations=10

lint: install  ## ruff check and ruff format --check (the settings are in pyproject.toml)
	$(BIN)/ruff check resexp tests benchmarks hubconf.py
	$(BIN)/ruff format --check resexp tests benchmarks hubconf.py

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix resexp tests benchmarks hubconf.py
	$(BIN)/ruff format resexp tests benchmarks hubconf.py

test-all: install  ## also run the slow tests (real CIFAR-10 from DATA=../shared/data) and GPU tests where a GPU is
	$(BIN)/pytest -m "slow or gpu or not (slow or gpu)"

demo: install  ## the demo sweep (plain/residual x 20/56 x 3 seeds, two runs side by side; ~8 min on 2 CPU cores), then plot + report
	$(BIN)/resexp train -m +experiment=demo hydra/launcher=joblib hydra.launcher.n_jobs=2 data.root=$(DATA) $(DOWNLOAD) $(EXTRA)
	$(BIN)/resexp plot runs/demo
	$(BIN)/resexp report runs/demo

analyze: install  ## after make demo: why it works on its sweep (6 analyses), then report.html
	$(BIN)/resexp analyze responses runs/demo
	$(BIN)/resexp analyze gradients runs/demo
	$(BIN)/resexp analyze signal runs/demo
	$(BIN)/resexp analyze paths runs/demo
	$(BIN)/resexp analyze lesion runs/demo --nets ResNet-56,plain-56 --seeds 0
	$(BIN)/resexp analyze landscape runs/demo --nets ResNet-56,plain-56 --seeds 0 --workers 2
	$(BIN)/resexp report runs/demo --format html

bench: install  ## training images/s of resexp vs a common-way reference loop on this machine (resexp bench)
	$(BIN)/resexp bench

notebook: install  ## notebooks/resexp.ipynb made again from its source notebooks/resexp.py (jupytext)
	$(BIN)/jupytext --to ipynb notebooks/resexp.py -o notebooks/resexp.ipynb

tb: install  ## TensorBoard on runs/ (http://localhost:6006)
	$(BIN)/tensorboard --logdir runs

clean:  ## remove caches (never runs/)
	rm -rf .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
