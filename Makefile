# stat_service: `make` lists the targets.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test test-fast test-long lint format token clean bench bench-import bench-scripts bench-instructions

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed ## create .venv from requirements.txt (done by the others when needed)

run: $(VENV)/.installed ## serve on PORT (default 8080) under gunicorn; REDIS_URL or local/embedded Redis
	PORT=$(PORT) JWT_DEV_SECRET_FILE="$(CURDIR)/.dev-secret" \
	$(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

test: $(VENV)/.installed ## the whole suite: unit (fakeredis) and integration (real Redis)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed ## unit tests on fakeredis only
	$(PY) -m pytest -m "not real_redis" $(PYTEST_ARGS)

test-long: $(VENV)/.installed ## the fuzz, model and failover tests run long (about 15 min)
	STAT_MODEL_EXAMPLES=500 STAT_MODEL_STEPS=60 STAT_SCHEMATHESIS_EXAMPLES=5000 \
	STAT_FAILOVER_SECONDS=30 $(PY) -m pytest -s $(PYTEST_ARGS) \
	tests/test_model.py tests/test_openapi.py tests/test_cluster.py

lint: $(VENV)/.installed ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed ## apply ruff format and fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

token: $(VENV)/.installed ## print a dev token: make token SUB=user@example.org [ADMIN=1]
	JWT_DEV_SECRET_FILE="$(CURDIR)/.dev-secret" \
	$(PY) -m stat_service.local.devtoken $(if $(ADMIN),--admin) "$(SUB)"

clean: ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

bench: $(VENV)/.installed ## benchmark against a bare-Flask ceiling (bench/README.md)
	$(PY) bench/run.py

bench-import: $(VENV)/.installed ## bulk import vs HTTP PUT: subscribers/s, peak RSS (bench/IMPORT.md)
	$(PY) bench/import_bench.py

bench-scripts: $(VENV)/.installed ## Redis time of each Lua script, 100 vs 5,000 records (bench/README.md)
	$(PY) bench/script_times.py

bench-instructions: $(VENV)/.installed ## instructions per request vs the ceiling, by valgrind: repeatable (bench/README.md)
	$(PY) bench/instructions.py
