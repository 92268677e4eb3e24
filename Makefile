# Two commands: `make demo` (the whole pipeline on a CPU) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test venv browser bench clean

venv: $(STAMP)

# Plain pip: torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache.
# pyproject.toml holds ranges; constraints.txt pins the versions tested here (docs/deploy.md).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian's chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@test -x $(CHROMIUM) || (command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
		|| echo "chromium could not be installed: the browser tests will be skipped")

# e.g. make demo DEMO_FLAGS="--epochs 12" for a shorter run on a slow CPU
DEMO_FLAGS ?=
demo: $(STAMP)
	$(VENV)/bin/traffic-retrieval demo --out demo_output $(DEMO_FLAGS)

test: $(STAMP) browser
	$(PY) -m pytest

bench: $(STAMP)
	bash benchmarks/run_all.sh

clean:
	rm -rf demo_output .pytest_cache
