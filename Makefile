# diffq developer entry points. `make test` and `make demo` work on a fresh clone: they create
# .venv and install the package (with the dev extra) first when needed. The demo passes
# --overwrite so that running it again replaces its previous run directory.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check diffq_cli tests bench

bench: $(STAMP)
	$(BIN)/python bench/quant_bench.py
	$(BIN)/python bench/memory_bench.py

demo: $(STAMP)
	$(BIN)/diffq finetune --model resnet18 --mu 1e-3 --overwrite

clean:
	rm -rf runs .pytest_cache .ruff_cache
