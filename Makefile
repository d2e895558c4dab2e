# The README's commands. `make run` and `make test` work on a fresh machine
# with Python 3.11+, RabbitMQ and Redis reachable (see .env.example).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test lint docs unit services system-packages clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint constraints.txt -e '.[dev,docs,bench]'
	touch $@

## Run every worker process type of the Procfile (scale one: `make run ARGS="-c reports=3"`).
run: setup
	$(BIN)/honcho start $(ARGS)

## Lint, type-check, build the docs, then the whole suite against real RabbitMQ, Redis, Prometheus and worker processes.
test: setup system-packages lint docs
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Build the docs site; --strict fails on a broken link or anchor. The site is written outside the repo.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(or $(TMPDIR),/tmp)/greenroom-site

## Pure unit tests only (no services needed).
unit: setup
	$(BIN)/pytest tests/unit

## Debian packages the tests use for real (prometheus, promtool, docker-compose).
system-packages:
	bash .ci/system-packages

## Start local RabbitMQ and Redis if they are not running (as CI does).
services:
	bash .ci/services

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
