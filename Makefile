# The two commands a newcomer needs: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= data,torch,test

.PHONY: install train test benchmark docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) scripts/train.py

test: install
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 tests

benchmark: install
	$(PY) scripts/benchmark.py

docs: install
	$(PY) scripts/make_docs.py
