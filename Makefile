PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: install run test lint bench faults screenshots clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make run` needs only what the program imports; the test, lint and conformance tools come with `make test`.
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,conformance]'
	touch $(DEV) $(RUNTIME)

install: $(DEV)

# The demo files, 13 weekly snapshots before today in config/.state (Trends, Changes and Movement have
# history; weeks already there are skipped), then the run.
run: $(RUNTIME)
	$(BIN)/pipeline-sync demo-data --out out/demo --history-weeks 13 --config config/demo.yaml
	$(BIN)/pipeline-sync run --config config/demo.yaml

test: $(DEV)
	$(BIN)/python -m pytest -q

lint: $(DEV)
	$(BIN)/ruff check .

bench: $(DEV)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run.py
	$(BIN)/python bench/bench_extract.py --rows 10000 100000 1000000 --flow-rows 100000 --no-variants

faults: $(DEV)
	$(BIN)/python -m tests.fault_matrix --out docs/reliability.md

# The demo's Summary and Actions as PNG in docs/img/ (LibreOffice headless + pdftoppm; skipped with a
# message where they are not installed: apt-get install libreoffice-calc poppler-utils)
screenshots: $(DEV)
	$(BIN)/python docs/screenshots.py --out docs/img

# The demo's state is config/.state (state lives in .state/ beside each config, or state.url).
clean:
	rm -rf $(VENV) out .state config/.state .pytest_cache build *.egg-info
	@echo "removed .venv, out/, build files and the demo's state (config/.state);" \
	      "your own configs keep their state in .state/ beside each config (or state.url)"
