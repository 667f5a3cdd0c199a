# make demo:    set up .venv, prepare digits, train the teacher, distill students, print a table (minutes).
# make fashion: the Fashion-MNIST benchmark on 2 CPU cores (1 h 41 min measured without FD at 5,000
#               samples, which adds about half an hour).
# make test:    set up .venv, check the code with ruff and run the test suite.
# On a machine without a GPU the CPU build of torch is installed first (a bare `torch` requirement
# pulls a multi-GB CUDA build). Elsewhere set TORCH_INDEX, e.g.
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
FASHION_OUTPUT ?= runs/fashion

.PHONY: demo fashion test lint setup system-packages clean

setup: $(VENV)/.installed

# torch goes through pip (which honours the machine's pip config, e.g. local wheels) and is then
# pinned; uv installs the rest: 103 s against pip's 174 s into a fresh .venv, same packages.
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would
# otherwise recompile its imports (22 s against 12 s for torch, deepspeed, diffusers, ray).
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PY) -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip freeze | grep '^torch==' > $(VENV)/torch-pin.txt || true
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) --constraint $(VENV)/torch-pin.txt -e ".[test]"
	touch $@

# Fashion-MNIST (the benchmark and one test) and Prometheus (the dashboard test) come from Debian.
system-packages:
	@bash scripts/system_packages.sh

demo: setup
	$(PY) -m jobs.demo

fashion: setup system-packages
	$(PY) -m jobs.benchmark fashion --output $(FASHION_OUTPUT)

lint: setup
	$(VENV)/bin/ruff check .

test: setup system-packages lint
	$(PY) -m pytest -q --durations=15

clean:
	rm -rf runs mlruns
