# Two entry points for a fresh machine: `make demo` (the main job on the built-in default
# model) and `make test`. Both create .venv and install what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,export,dev

.PHONY: venv test demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

test: venv
	$(BIN)/python -m pytest -n 2 tests

demo: venv
	$(BIN)/python scripts/demo_photos.py out/demo/photos
	$(BIN)/regatt export -o out/demo/default.onnx --explain
	$(BIN)/regatt encode out/demo/default.onnx out/demo/photos -o out/demo/store
	$(BIN)/regatt search out/demo/default.onnx out/demo/store out/demo/photos/chelsea.jpg --top 5

bench: venv
	$(BIN)/regatt bench --out benchmarks/results

clean:
	rm -rf out
