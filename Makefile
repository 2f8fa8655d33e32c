# Two commands on a fresh machine:   make demo   |   make test
# Both create .venv, install PyTorch 2.13.0 first (the CPU wheel where the machine has one), then
# the project with torch pinned by a constraints file so no later resolve can replace it.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
PIP    := PIP_CONSTRAINT=$(abspath $(VENV))/constraints.txt $(BIN)/python -m pip install -q

# Tests never reach W&B or the Hugging Face Hub (online W&B with a key hangs without network).
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: demo test test-fast gpu-check lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(PIP) "$(TORCH)"

$(VENV)/.base: $(BIN)/python pyproject.toml
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.base

## demo: check the embedded example model (zero-install path: only what Colab ships)
demo: $(VENV)/.base
	$(BIN)/testbench validate

## test: lint, then the whole suite (what CI runs)
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest --durations=25

## test-fast: the inner loop, without tests marked slow
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not slow" -x -q

## gpu-check: on a CUDA machine, ≤ 5 min: tiers, memory model, T4 batch, throughput, resume,
## export, compile (benchmarks/results/gpu_check.json); without CUDA it says so and exits 0
gpu-check: $(VENV)/.dev
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
