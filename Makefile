# The one entry point for people and CI. `make run` and `make test` set up on their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= data
DEMO_CUSTOMERS ?= 10000
DEMO_DAYS ?= 90
SEED ?= 7

.PHONY: setup run test lint bench bench-data bench-features bench-training bench-serving bench-score \
	bench-quality bench-experiments bench-browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

WAREHOUSE := $(DATA_DIR)/warehouse.duckdb
# The demo history ends a week before today (late outcomes included), so "now" follows it.
DEMO_START := $(shell date -u -d "-$$(( $(DEMO_DAYS) + 8 )) days" +%F)
EXPERIMENT_START := $(shell date -u -d "-7 days" +%F)

run: setup
	$(BIN)/recsys data generate --customers $(DEMO_CUSTOMERS) --days $(DEMO_DAYS) --seed $(SEED) \
		--start $(DEMO_START) --out $(DATA_DIR)/demo
	$(BIN)/recsys data load $(DATA_DIR)/demo --db $(WAREHOUSE)
	$(BIN)/recsys data summary --db $(WAREHOUSE)
	$(BIN)/recsys features materialize --db $(WAREHOUSE) --store sqlite
	$(BIN)/recsys train --db $(WAREHOUSE) --promote-if-no-champion
	# A live experiment on the demo's customers (docs/experiments.md): 14 days of traffic,
	# the last 7 in the experiment; played once, read out on every run.
	$(BIN)/recsys experiments show demo-live > /dev/null 2>&1 || ( \
		$(BIN)/recsys experiments create examples/experiments/demo-live.yaml \
			--start $(EXPERIMENT_START) && \
		$(BIN)/recsys experiments start demo-live && \
		$(BIN)/recsys experiments simulate demo-live --dataset $(DATA_DIR)/demo --days 14 )
	$(BIN)/recsys experiments report demo-live --out $(DATA_DIR)/reports
	# How every offer performs in the event log (docs/reports.md): offers.html and offers.csv.
	$(BIN)/recsys report offers --out $(DATA_DIR)/reports
	# /demo: the browser client's example page (development only, docs/serving.md "Browsers");
	# a token secret made for this run signs the demo's customer tokens.
	RECSYS_SECURITY__DEMO_ENABLED=true \
	RECSYS_SECURITY__TOKEN_SECRET=$${RECSYS_SECURITY__TOKEN_SECRET:-$$($(BIN)/python -c \
		'import secrets; print(secrets.token_urlsafe(32))')} \
		$(BIN)/recsys serve --host 127.0.0.1 --port 8000

test: setup lint
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# ARGS passes options to a bench, e.g. make bench-serving ARGS="--baseline REF" (bench/RESULTS.md)
bench: bench-data bench-features bench-training bench-serving bench-browser bench-score bench-quality \
	bench-experiments

bench-data: setup
	$(BIN)/python bench/bench_data.py $(ARGS)

bench-features: setup
	$(BIN)/python bench/bench_features.py $(ARGS)

bench-training: setup
	$(BIN)/python bench/bench_training.py $(ARGS)

bench-serving: setup
	$(BIN)/python bench/bench_serving.py $(ARGS)

# browser decisions/s from 1,000 customer tokens under one publishable key (bench-serving's data)
bench-browser: setup
	$(BIN)/python bench/bench_browser.py $(ARGS)

# recsys score of 1M customers (data built once under data/bench_score; needs bench-serving's model)
bench-score: setup
	$(BIN)/python bench/bench_score.py --record $(ARGS)

# The peers of bench-quality (MABWiser, Vowpal Wabbit) are the `bench` extra, not the service's.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# recsys's served policy against LightGBM, LinUCB and VW on the demo's ground truth (bench/RESULTS.md)
bench-quality: $(BENCH_STAMP)
	$(BIN)/python bench/bench_quality.py $(ARGS)

# experiment readout: A/A and A/B simulations (false positives, power, coverage, SRM) and the
# analysis of 10M decisions over 1M customers on DuckDB (bench/RESULTS.md)
bench-experiments: setup
	$(BIN)/python bench/bench_experiments.py $(ARGS)

clean:
	rm -rf $(VENV) $(DATA_DIR) mlruns mlflow.db .pytest_cache
