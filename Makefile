PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench faults clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,conformance]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/pipeline-sync demo-data --out out/demo
	$(BIN)/pipeline-sync run --config config/demo.yaml

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_extract.py --rows 10000 100000 1000000 --flow-rows 100000 --no-variants

faults: install
	$(BIN)/python -m tests.fault_matrix --out docs/reliability.md

clean:
	rm -rf $(VENV) out .state .pytest_cache
