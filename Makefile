# Two entry points for a fresh machine: `make demo` (the main job on the built-in default
# model) and `make test`. Both create .venv and install what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,export,dev

#: the runtime's tests, also run with no PyTorch installed (test-runtime)
RUNTIME_TESTS := tests/test_sdk.py tests/test_engines.py tests/test_index.py tests/test_search.py \
	tests/test_store.py tests/test_imageio.py tests/test_pipeline.py tests/test_evaluation.py \
	tests/test_datasets.py tests/test_layering.py tests/test_encode_cli.py tests/test_explain.py \
	tests/test_ann.py tests/test_distributed.py tests/test_composition.py tests/test_collection.py tests/test_docs.py tests/test_reliability.py \
	tests/test_integrity.py tests/test_faults.py tests/test_hostile.py tests/test_local.py tests/test_precision_gate.py \
	tests/test_changes.py tests/test_sync.py tests/test_filters.py tests/test_web.py tests/test_serve_reload.py
RUNTIME_VENV := .venv-runtime

.PHONY: venv test test-runtime wheel-smoke docs demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

test: venv
	$(BIN)/python -m pytest -n 2 tests

# The runtime alone: a venv with '.[cpu,dev]' (no torch, no export extra) and the committed
# tests/fixtures/tiny.onnx in place of models exported on the fly.
$(RUNTIME_VENV)/.installed: pyproject.toml
	test -x $(RUNTIME_VENV)/bin/python || $(PY) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --upgrade pip
	$(RUNTIME_VENV)/bin/python -m pip install -q -e '.[cpu,dev]'
	touch $@

test-runtime: $(RUNTIME_VENV)/.installed
	! $(RUNTIME_VENV)/bin/python -c "import torch" 2>/dev/null
	$(RUNTIME_VENV)/bin/python -m pytest -n 2 $(RUNTIME_TESTS)

# Installs as users install: build the wheel, install it (not editable) into a fresh venv with
# only the runtime extras, and run the main job on it with the default export (made by the
# development venv: the runtime has no torch; scripts/wheel_smoke.py: encode, search,
# dedup --store, the Python Collection, serve /readyz), from outside the repository.
WHEEL_VENV := .venv-wheel
WHEEL_DIR := build/wheel-smoke

wheel-smoke: venv
	rm -rf $(WHEEL_DIR) $(WHEEL_VENV)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	$(PY) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(ls $(WHEEL_DIR)/regatt-*.whl)[cpu,serve]"
	$(BIN)/regatt export -o $(WHEEL_DIR)/default.onnx > $(WHEEL_DIR)/export.log
	cd $(WHEEL_DIR) && $(CURDIR)/$(WHEEL_VENV)/bin/python $(CURDIR)/scripts/wheel_smoke.py $(CURDIR)/$(WHEEL_DIR)/default.onnx

# The documentation site (docs/, mkdocs.yml) into build/site; --strict: a broken link fails.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

demo: venv
	$(BIN)/python scripts/demo_photos.py out/demo/photos
	$(BIN)/regatt export -o out/demo/default.onnx --explain
	$(BIN)/regatt encode out/demo/default.onnx out/demo/photos -o out/demo/store
	$(BIN)/regatt search out/demo/default.onnx out/demo/store out/demo/photos/chelsea.jpg --top 5

bench: venv
	$(BIN)/regatt bench --out benchmarks/results

clean:
	rm -rf out
