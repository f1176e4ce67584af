# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   - create .venv, install, run the main job on the embedded default
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install lint gpu-check

install: $(STAMP)

# The torch stack is pinned first so that pip never swaps it for another build. The package is
# then installed without build isolation so that setup.py sees that torch and builds the C++
# CPU kernel (csrc/) against it; the build tools come first for that reason. Without a C++
# compiler the install still succeeds (without the extension; tests/test_cpu_extension.py
# then fails unless VITA_CLIP_ALLOW_NO_EXTENSION=1).
$(STAMP): pyproject.toml setup.py csrc/prompt_attention.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q "setuptools>=69" wheel ninja
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[dev,gpu]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vita_clip.train --fused

test: $(STAMP)
	$(BIN)/python -m pytest tests/ -q

lint: $(STAMP)
	$(BIN)/python -m ruff check .

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]" --no-build-isolation
	$(BIN)/python -m pytest benchmarks/ --benchmark-only

# Every CUDA test and the GPU benchmarks, one report (benchmarks/results/gpu_check.md); about 8
# minutes on an H100. Without a CUDA device it says so and exits 0.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py
