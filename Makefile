# Development entry points. Every target installs what it needs into $(VENV) first (CPU torch pinned by
# constraints-dev.txt; the package itself only asks for torch>=2.4).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lambdahat-installed

.PHONY: demo test lint validate bench clean

$(STAMP): pyproject.toml constraints-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-dev.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-dev.txt -e ".[test,ray,lm,interop]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lambdahat demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check src tests benchmarks

validate: $(STAMP)
	$(VENV)/bin/lambdahat validate

bench: $(STAMP)
	$(PY) benchmarks/estimator_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
