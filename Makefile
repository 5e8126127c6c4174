# Fresh machine -> working install in one step. CPU-only by default: torch comes from PyTorch's CPU wheel index
# where that index is reachable (a plain `pip install torch` on Linux x86 takes the CUDA build, about 20 nvidia
# wheels); where it is not (an offline mirror, a firewall), from pip's configured index, which takes whatever build
# that index has for TORCH. GPU users: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128` (or install
# their CUDA torch first: an installed torch is kept).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# the oldest transformers we support (pyproject's lower bound): the lent GPU machine's image has it
OLDEST_TRANSFORMERS ?= 5.17.0
BIN := $(VENV)/bin
OLD := .venv-oldest/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test test-oldest clean

setup: $(VENV)/.installed

# torch from TORCH_INDEX if it answers within 5 s, else from pip's own index; an installed torch is kept
define install_torch
	$(1)/python -c "import torch" 2>/dev/null || { \
	  if [ -n "$(TORCH_INDEX)" ] && $(1)/python -c "import sys, urllib.request; \
	      urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" "$(TORCH_INDEX)" 2>/dev/null; then \
	    echo "installing $(TORCH) from $(TORCH_INDEX)"; \
	    $(1)/python -m pip install --progress-bar on --index-url "$(TORCH_INDEX)" "$(TORCH)"; \
	  else \
	    echo "$(TORCH_INDEX) not reachable: installing $(TORCH) from pip's configured index"; \
	    echo "(on Linux x86 PyPI's torch is the CUDA build)"; \
	    $(1)/python -m pip install --progress-bar on "$(TORCH)"; \
	  fi; }
endef

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call install_torch,$(BIN))
	@echo "installing llava-accel and its test extra"
	$(BIN)/python -m pip install --progress-bar on -e '.[test]'
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
	$(call install_torch,$(OLD))
	$(OLD)/python -m pip install --progress-bar on -e '.[test]' "transformers==$(OLDEST_TRANSFORMERS)"
	$(OLD)/python -c "import transformers as t; assert t.__version__ == '$(OLDEST_TRANSFORMERS)', t.__version__"
	touch $@

clean:
	rm -rf $(VENV) .venv-oldest build *.egg-info
