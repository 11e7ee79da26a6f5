# hwflow: two commands for a fresh machine.
#   make run   set up, compile the bundled MLP for the Alveo U280, simulate it in Verilator
#   make test  set up, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH   = torch==2.13.0   # the local CPU wheel; an unpinned torch pulls a multi-GB CUDA build

.PHONY: setup run test bench lint clean

$(BIN)/hwflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/hwflow

run: setup
	$(BIN)/hwflow compile --example mlp --board u280 -o build/mlp-u280
	$(BIN)/hwflow sim build/mlp-u280

test: setup
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: setup
	$(BIN)/python benchmarks/bench_matmul.py
	$(BIN)/python benchmarks/bench_sparse.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf build .pytest_cache
