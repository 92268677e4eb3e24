# Two commands: `make demo` (the whole pipeline on a CPU) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

venv: $(STAMP)

# Plain pip: torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/traffic-retrieval demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf demo_output .pytest_cache
