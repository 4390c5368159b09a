# Two entry points for a newcomer: `make demo` and `make test`.
# Both create .venv on first use and install the project into it from this checkout.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Extra `python -m venv` flags, e.g. --system-site-packages to reuse a preinstalled torch.
VENV_FLAGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.corrseg3d-installed
# Test processes (pytest-xdist); the tests of one file share a process (--dist loadfile), so the
# SLURM tests share their one private cluster. 2 fits the 2-core CI machine; more on a larger one.
TEST_WORKERS ?= 2
# The CPU build of torch, installed only when no torch is importable (a plain `torch`
# requirement would pull a multi-GB CUDA build on machines without a GPU).
TORCH_CPU ?= torch==2.13.0

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -m pip install -q -e ".[test,slurm]"
	touch $(STAMP)

demo: install
	$(PY) -m pipeline.demo --out demo

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

bench: install
	$(PY) benchmarks/evaluate.py

clean:
	rm -rf $(VENV) demo build *.egg-info
