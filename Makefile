# Everything installs into .venv from this repository's own files.
#   make bench   the main job: the latency benchmark table, asyncio and uvloop
#   make test    lint, types and the full test suite on both loops
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SRC := pyproject.toml setup.py $(wildcard cbits/*.c cbits/*.h) cbits/build_ffi.py

.PHONY: venv test lint pytest bench bench-quick stress stress-quick sanitize demo clean

venv: $(STAMP)

$(STAMP): $(SRC)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

test: $(STAMP) lint pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-quick: $(STAMP)
	$(PY) benchmarks/run_all.py --quick

stress: $(STAMP)
	$(PY) tests/stress/run.py

stress-quick: $(STAMP)
	$(PY) tests/stress/run.py --quick

sanitize:
	bash tests/stress/sanitize.sh

demo: $(STAMP)
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/aiosigbridge/_sigbridge*.so src/aiosigbridge/_sigbridge.c
