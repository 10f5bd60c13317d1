# The book's two commands are `make book` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Tests never touch the network: the notebooks read pinned sources (the same online and offline), and the offline
# switches make any remote source fail fast. PYTHONHASHSEED is shared.book.KERNEL_ENV, which `make book` sets too.
TEST_ENV := LLM_BOOK_OFFLINE=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONHASHSEED=0
NBVAL    := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout=900

.PHONY: setup data book test export check-export refresh bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml tests/diagrams/package-lock.json
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install -r requirements.txt
	# Mermaid's parser for tests/test_diagrams.py, only where npm exists (the book itself needs no Node.js)
	if command -v npm >/dev/null 2>&1; then npm ci --silent --prefix tests/diagrams; fi
	touch $@

## List the data sources and fetch the pinned ones into the cache, so notebooks start warm (add ARGS=--remote for the rest).
data: setup
	$(PY) -m shared.registry $(ARGS)

## The main job: execute every notebook in reading order into build/ (committed notebooks are left untouched).
book: setup
	$(PY) -m shared.book

## The whole test suite: unit and equivalence tests, the export-sync test, nbval over every notebook.
test: setup
	$(TEST_ENV) $(PY) -m shared.registry
	$(TEST_ENV) $(PY) -m pytest $(NBVAL) $(ARGS)

## Write the notebooks' `#| export` cells into shared/.
export: setup
	$(PY) -m shared.export

check-export: setup
	$(PY) -m shared.export --check

## Re-execute notebooks in place to refresh their committed outputs: make refresh NB=ch01_foundations/03_attention.ipynb
refresh: setup
	$(PY) -m shared.export
	$(TEST_ENV) $(PY) -m shared.book --inplace $(NB)

## Benchmarks print tables; they are not tests.
bench: setup
	for b in tests/bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build .pytest_cache
