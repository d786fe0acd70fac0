# diffq developer entry points. `make test` and `make demo` work on a fresh clone: they create
# .venv and install the package (with the dev and onnx extras: the ONNX exports are tested) first
# when needed. The demo passes
# --overwrite so that running it again replaces its previous run directory.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint bench bench-ours bench-reference demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,onnx]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check diffq_cli tests bench

# `make bench`: the core benchmarks with the reference DiffQ measured side by side in the same
# run. The reference (diffq-fixed, CC-BY-NC, compiles a Cython extension) lives in its own venv,
# never in .venv; `make bench-ours` measures this package alone (offline, no compiler needed).
bench: bench-reference

bench-ours: $(STAMP)
	$(BIN)/python bench/quant_bench.py
	$(BIN)/python bench/memory_bench.py

REF_VENV ?= .venv-reference
$(REF_VENV)/.installed: $(STAMP)
	test -x $(REF_VENV)/bin/python || $(PY) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install -q "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])')" \
		"torchvision==$$($(BIN)/python -c 'import torchvision; print(torchvision.__version__.split("+")[0])')" diffq-fixed
	$(REF_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

bench-reference: $(REF_VENV)/.installed
	$(REF_VENV)/bin/python bench/quant_bench.py --reference
	$(REF_VENV)/bin/python bench/memory_bench.py --reference

demo: $(STAMP)
	$(BIN)/diffq finetune --model resnet18 --mu 1e-3 --overwrite

clean:
	rm -rf runs .pytest_cache .ruff_cache
