# cnnlab: `make train` installs everything and trains LeNet on Fashion-MNIST; `make test` installs and tests.
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := dataset-fashion-mnist slurm-wlm munge

.PHONY: install system-packages train test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,mlflow]'  # mlflow: logger=mlflow, its tests
	touch $@

install: system-packages $(VENV)/.installed

# Debian packages: the real Fashion-MNIST, SLURM and munge (the tests start a one-node cluster with
# scripts/local-slurm.sh), and what the tests drive: a headless browser.
system-packages:
	@if command -v apt-get >/dev/null && ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

train: install
	$(PY) -m cnnlab.train $(ARGS)

# The TensorBoard test drives Debian's headless Chromium: `make test` installs it too (the variable reaches the
# prerequisites, so system-packages installs it).
test: APT_PACKAGES += chromium chromium-driver
# Two pytest workers, a test file each at a time: one file's tests (the SLURM ones: one cluster) stay in one
# worker, and the files with slow tests go first (tests/conftest.py orders them; --no-loadscope-reorder keeps
# that order), so that neither worker ends alone with a long file. About 12 minutes on 2 cores (README, Tests).
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The speed benchmark (minutes): cnnlab against the seeds' loop and a plain PyTorch loop, on the real data.
bench: install
	$(PY) benchmarks/speed.py --data-dir data $(ARGS)
