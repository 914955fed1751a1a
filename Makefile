# Set-up, the main job and the tests. Everything runs in a local virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build (an unpinned torch may pull a multi-GB CUDA build)
setup: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,bench,lmeval,onnx]"
	$(BIN)/hf-saffu fetch-corpus

# The main job: train (explicit warm start + backprop), evaluate and sample a SAFFU on the built-in corpus
demo: setup
	$(BIN)/hf-saffu train configs/shakespeare.yaml

test: setup
	$(BIN)/python -c "import torch, transformers, accelerate, datasets, huggingface_hub as h; print('testing with torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'huggingface_hub', h.__version__)"
	$(BIN)/python -m pytest -q -n 2 tests

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
