# Fresh machine -> working install in one step. CPU-only by default: TORCH names the CPU wheel so that pip does
# not pull a multi-GB CUDA build. GPU users: `make setup TORCH=torch` (or install their CUDA torch first: an
# installed torch is kept).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# the oldest transformers we support (pyproject's lower bound): the lent GPU machine's image has it
OLDEST_TRANSFORMERS ?= 5.17.0
BIN := $(VENV)/bin
OLD := .venv-oldest/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test test-oldest clean

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

# the suite again on the oldest transformers we support (CI runs it after `test`)
test-oldest: .venv-oldest/.installed
	$(OLD)/python -m pytest -q -p no:cacheprovider

.venv-oldest/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv-oldest
	$(OLD)/python -m pip install -q --upgrade pip
	$(OLD)/python -c "import torch" 2>/dev/null || $(OLD)/python -m pip install -q "$(TORCH)"
	$(OLD)/python -m pip install -q -e '.[test]' "transformers==$(OLDEST_TRANSFORMERS)"
	$(OLD)/python -c "import transformers as t; assert t.__version__ == '$(OLDEST_TRANSFORMERS)', t.__version__"
	touch $@

clean:
	rm -rf $(VENV) .venv-oldest build *.egg-info
