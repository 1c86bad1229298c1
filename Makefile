# The two commands of the README's quick start. Each creates .venv with the pinned
# dependencies the first time (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean proto

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[fl,bench,dev,dp,he,metrics,torch]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/secagg demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py --write --big

clean:
	rm -rf $(VENV) .venv-flower .pytest_cache .mypy_cache .ruff_cache

proto: $(STAMP)
	$(VENV)/bin/python -m grpc_tools.protoc -I proto --python_out=src --pyi_out=src \
		--grpc_python_out=src proto/secagg/service/v1/coordinator.proto
