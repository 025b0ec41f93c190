# lightbox: `make help` lists the targets a newcomer needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast test-services lint format serve bench bench-runtimes bench-import bench-bulk clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## create .venv with the pinned stack (torch CPU first)

$(VENV)/.installed: requirements/base.txt requirements/dev.txt requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and exactly: a looser spec pulls several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

demo: venv ## run the whole lifecycle through Airflow, then serve and predict
	$(BIN)/lightbox demo

test: venv ## run every test (services tests skip when their servers are down)
	$(BIN)/pytest

test-fast: venv ## unit tests only (seconds, no servers)
	$(BIN)/pytest -m unit

test-services: venv ## only the tests against PostgreSQL, Redis, RabbitMQ, S3
	$(BIN)/pytest -m services

lint: venv ## ruff (with Airflow rules on dags/) and a mypy type check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/ruff check --select AIR dags/
	$(BIN)/mypy

format: venv ## ruff format + autofix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

serve: venv ## serve models:/lightbox@champion on 127.0.0.1:8080
	$(BIN)/lightbox serve

bench: venv ## serving benchmark: prints the tables of docs/benchmarks.md (about 4 min; `bench/serving.py --ray` adds Ray Serve)
	$(BIN)/python bench/serving.py

bench-runtimes: venv ## the model per runtime (TorchScript, ONNX Runtime fp32/int8), the server vs the best, overload to 1,024 connections (~7 min)
	$(BIN)/python bench/runtimes.py

bench-import: venv ## import benchmark: 2,000 camera-size photos + features, then --append of 100 (docs/benchmarks.md)
	$(BIN)/python bench/importing.py

bench-bulk: venv ## bulk scoring against its model and decode limits (docs/benchmarks.md; --photos/--camera to size)
	$(BIN)/python bench/bulk.py --markdown

clean: ## remove the embedded state (.lightbox/) and the generated data/
	rm -rf .lightbox data
