# make demo: set up .venv, prepare digits, train the teacher, distill students, print a table.
# make test: set up .venv and run the test suite.
# On a machine without a GPU the CPU build of torch is installed first (a bare `torch` requirement
# pulls a multi-GB CUDA build). Elsewhere set TORCH_INDEX, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: demo test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PY) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: setup
	$(PY) -m jobs.demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf runs mlruns
