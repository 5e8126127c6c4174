# Fresh machine -> working install in one step. CPU-only by default: TORCH names the CPU wheel so that pip does
# not pull a multi-GB CUDA build. GPU users: `make setup TORCH=torch` (or install their CUDA torch first: an
# installed torch is kept).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/llava-accel backends
	$(BIN)/llava-accel generate --backend cpu --image examples/images/word.png --prompt "$$(printf 'What word is written in the image?\nAnswer the question using a single word or phrase.')"
	$(BIN)/llava-accel demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
