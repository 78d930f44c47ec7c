# Two commands a user needs: `make demo` and `make test` (each installs first when .venv is missing).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= outputs/demo

.PHONY: install test test-slow lint format demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -m "not slow" -q

test-slow: install
	$(PY) -m pytest -m slow -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(PY) -m experiments.demo $(OUT)

bench: install
	$(PY) bench/memory.py
	$(PY) bench/speed.py
	$(PY) bench/step_profile.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
