PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: install run test test-floors lint bench faults screenshots clean

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

# Every runtime dependency at its declared floor at once (pins generated from pyproject.toml's `>=`
# by tests/floors.py, never written by hand), the test tools as the dev extra declares them, then
# the tests that drive each library for real: tableauserverclient, requests, PyJWT and msal over
# HTTP against the fakes (Tableau, Salesforce, HubSpot, Entra, Graph); pandas, numpy, openpyxl,
# xlsxwriter and python-calamine on real files; pydantic and PyYAML (config), SQLAlchemy (state),
# cronsim (schedules), apprise (alerts to a local receiver) and Prefect (the flow on its server).
FLOORS := .venv-floors
FLOORS_OK := $(FLOORS)/.installed
FLOOR_TOOLS := pytest pytest-timeout trustme
FLOOR_TESTS := tests/test_floors.py \
	tests/sources/test_tableau.py tests/sources/test_tableau_units.py tests/sources/test_tableau_lock.py \
	tests/sources/test_salesforce.py tests/sources/test_salesforce_limits.py tests/sources/test_salesforce_incremental.py \
	tests/sources/test_salesforce_flow.py tests/sources/test_hubspot.py tests/sources/test_hubspot_flow.py \
	tests/http/test_http.py tests/http/test_paging.py tests/sources/test_recorded_samples.py \
	tests/http/test_msal_auth.py tests/destinations/test_onedrive.py tests/destinations/test_onedrive_workbook.py \
	tests/sources/test_files.py tests/destinations/test_local_file.py tests/workbook/test_xlsx_writer_readback.py \
	tests/config/test_config.py tests/state/test_snapshots.py tests/flows/test_schedules.py tests/flows/test_notify.py \
	tests/flows/test_flow_prefect.py

$(FLOORS_OK): pyproject.toml tests/floors.py
	rm -rf $(FLOORS)
	$(PY) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install --quiet --upgrade pip
	$(PY) -m tests.floors constraints > $(FLOORS)/constraints.txt
	$(PY) -m tests.floors tools $(FLOOR_TOOLS) > $(FLOORS)/tools.txt
	$(FLOORS)/bin/python -m pip install --quiet -e . -r $(FLOORS)/tools.txt -c $(FLOORS)/constraints.txt
	touch $(FLOORS_OK)

test-floors: $(FLOORS_OK)
	$(FLOORS)/bin/python -m tests.floors check
	$(FLOORS)/bin/python -m pytest -q -p no:cacheprovider $(FLOOR_TESTS)

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
	rm -rf $(VENV) $(FLOORS) out .state config/.state .pytest_cache build *.egg-info
	@echo "removed .venv, .venv-floors, out/, build files and the demo's state (config/.state);" \
	      "your own configs keep their state in .state/ beside each config (or state.url)"
