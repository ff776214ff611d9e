# The two commands of the README: `make demo` and `make test`. Each builds its own virtual
# environment from the registries (nothing preinstalled), then runs.
PYTHON ?= python3
VENV := .venv
LATEST := .venv-latest

.PHONY: demo test test-fast test-slow lint clean

demo: $(VENV)/.installed  ## set up, then run the main job on the shipped default model
	$(VENV)/bin/python main.py

test: $(VENV)/.installed $(LATEST)/.installed  ## set up, then run the tests on both diffusers versions
	$(VENV)/bin/ruff check cachediff tests scripts experiments *.py
	$(VENV)/bin/ruff format --check cachediff tests scripts experiments *.py
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n 2
	OMP_NUM_THREADS=1 $(LATEST)/bin/python -m pytest -n 2 -p no:cacheprovider

test-fast: $(VENV)/.installed  ## the pinned environment only
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -n 2

test-slow: $(VENV)/.installed  ## also the tests marked slow
	$(VENV)/bin/python -m pytest --runslow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format cachediff tests scripts experiments *.py
	$(VENV)/bin/ruff check --fix cachediff tests scripts experiments *.py

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(LATEST)/.installed: requirements-latest.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q -r requirements-latest.txt
	$(LATEST)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	$(LATEST)/bin/pip install -q --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache outputs
