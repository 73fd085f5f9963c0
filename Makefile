# Development entry points. Every target installs what it needs into $(VENV) first (CPU torch pinned by
# constraints-dev.txt; the package itself only asks for torch>=2.4).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lambdahat-installed

.PHONY: demo test lint docs package validate bench clean

$(STAMP): pyproject.toml constraints-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-dev.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-dev.txt -e ".[test,ray,lm,interop,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lambdahat demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check src tests benchmarks docs

# The documentation site (mkdocs.yml, docs/) into site/; warnings are errors. The tutorials it shows are run by
# tests/test_tutorials.py (make test).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The sdist and wheel, installed into a fresh environment and run from outside the source tree (.ci/package).
package: $(STAMP)
	PYTHON=$(PY) bash .ci/package

validate: $(STAMP)
	$(VENV)/bin/lambdahat validate

bench: $(STAMP)
	$(PY) benchmarks/estimator_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
