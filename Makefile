# Two entry points: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format bench clean check-images lock

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/curation demo --out demo-out

# The suite runs in TEST_WORKERS processes (pytest-xdist); most tests keep one core busy.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/vulture

# constraints.txt pins the whole resolved environment; after changing pyproject.toml,
# resolve it once (`pip install -e '.[dev]'` without -c) and record the result here.
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^#' \
	  | sed 's/^torch==\([^+]*\)+cpu$$/torch==\1/' | sort -f; } > constraints.tmp
	mv constraints.tmp constraints.txt

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The Dataflow images' pinned requirements and the project resolve from PyPI (run it on
# Linux x86-64 with CPython 3.11, the images' platform); nothing is installed.
check-images: $(STAMP)
	$(BIN)/pip install --isolated --quiet --dry-run --ignore-installed --target .image-check \
	  --report .image-check.json -r docker/requirements-worker.txt ".[gcs,s3]"
	$(BIN)/python -c "import json; r = json.load(open('.image-check.json')); \
	  v = {i['metadata']['name'].lower(): i['metadata']['version'] for i in r['install']}; \
	  print('images resolve: torch', v['torch'], 'apache-beam', v['apache-beam'], \
	        'transformers', v['transformers'])"
	rm -rf .image-check .image-check.json

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
