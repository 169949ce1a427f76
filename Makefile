# Entry points. Each target sets up .venv on first use (scripts/bootstrap.sh).
PY := .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo quickstart test lint typecheck check docs bench clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	.venv/bin/hf-cagul demo

quickstart: setup
	$(PY) examples/quickstart.py

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check src tests bench examples scripts app.py
	$(PY) -m ruff format --check src tests bench examples scripts app.py

typecheck: setup
	$(PY) -m mypy

check: lint typecheck

docs: setup
	$(PY) -m mkdocs build --strict

bench: setup
	$(PY) bench/inference_overhead.py
	$(PY) bench/fit_cost.py
	$(PY) bench/scale.py

clean:
	rm -rf .venv .pytest_cache .ruff_cache .mypy_cache site
