# Set-up and entry points. `make demo` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On the project's machines `torch==2.13.0` is the CPU wheel that lies on disk; elsewhere pick any torch>=2.4.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup reproduce demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,dag,eval]"
	touch $@

setup: $(VENV)/.installed

reproduce: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/snakemake --cores all

demo: setup
	$(PY) -m smoe demo --out results/demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) results/demo .snakemake
