# The two commands a newcomer needs: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= data,torch,test,onnx

.PHONY: install train test benchmark docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) -m zoo train

test: install
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 tests

benchmark: install
	$(PY) -m zoo benchmark

docs: install
	$(PY) -m zoo docs
