# Every target sets up .venv itself when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geoseg-installed
PYTEST_WORKERS ?= 2

.PHONY: setup test lint demo bench server worker deploy clean image image-check

# gdal-utils: GDAL's validate_gpkg.py for the tests, of the GDAL pyogrio ships. Pure Python;
# its `gdal` requirement (the C bindings) is optional for the checks the tests run: --no-deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt gdal-utils
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --durations=15

lint: setup
	$(BIN)/ruff check geoseg flows tests bench
	$(BIN)/ruff format --check geoseg flows tests bench
	$(BIN)/mypy geoseg flows

demo: setup
	$(BIN)/geoseg demo --out demo-out

# A local Prefect server, a process worker and the deployments (docs/usage-flows.md):
# run `make server` and `make worker` in two terminals, then `make deploy` once.
server: setup
	scripts/prefect-server.sh

worker: setup
	scripts/prefect-worker.sh

deploy: setup
	scripts/prefect-deploy.sh

# The GPU worker image (Dockerfile) as geoseg-gpu:latest: docker, else podman/buildah
# (ENGINE=... picks one); image-check also builds its base where it cannot be pulled and runs
# the pipeline inside the image (docs/usage-retrain.md).
image:
	scripts/image.sh

image-check:
	scripts/image-check.sh

clean:
	rm -rf $(VENV) demo-out .pytest_cache
