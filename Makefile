# Quick start: `make demo` runs the main job on the embedded synthetic data; `make test` runs the tests.
# Each target creates the virtual environment and installs the project when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo_out

.PHONY: venv demo test test-all lint bench

$(BIN)/qid: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned to the releases this machine holds on disk
	$(BIN)/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/python -m pip install --quiet torch torchvision
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/qid

venv: $(BIN)/qid

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/qid demo --out $(OUT)

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not gpu and not hub"

lint: venv
	$(BIN)/ruff check qwen_instruct_det metrics tests benchmarks dataset_scripts

bench: venv
	$(BIN)/python benchmarks/build_speed.py
