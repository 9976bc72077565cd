# Everything a fresh machine needs happens here: venv, CPU torch, the package, test tools.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
# The core engine mypy checks (records, grid, ports, windowing, pipeline, checkpoint and their utilities).
CORE := streamseq/records.py streamseq/grid.py streamseq/ports.py streamseq/memory.py streamseq/windowing.py \
        streamseq/pipeline.py streamseq/checkpoint.py streamseq/calibration.py streamseq/keyspace.py \
        streamseq/errors.py streamseq/timeutil.py streamseq/clock.py

.PHONY: setup backtest test test-fast test-broker lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

.stamp-setup: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: .stamp-setup

.stamp-apt:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; fi; }
	touch $@

# The main job: a replay backtest over replay_data/ (table on the terminal, report in out/).
backtest: setup
	$(BIN)/streamseq backtest-all replay_data --out out

# The whole suite, in the order that fails fastest: lint, the tests without a broker, then the broker tests.
test: lint test-fast test-broker

# No broker, no Docker tooling: under two minutes.
test-fast: setup .stamp-apt
	$(BIN)/python -m pytest -q -m "not kafka"

test-broker: setup .stamp-apt
	$(BIN)/python -m pytest -q -m "kafka"

lint: setup
	$(BIN)/ruff check streamseq connectors tests bench
	$(BIN)/mypy $(CORE)

bench: setup
	$(BIN)/python bench/bench_models.py

clean:
	rm -rf $(VENV) .stamp-* out
