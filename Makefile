# The two commands of the README. Both set up a virtual environment first (once; again when a
# requirements file changes).
#   make default   build the image world, pretrain a small CLIP, fine-tune it with Omni-NegCLIP, evaluate
#   make test      the test suite (offline, CPU)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: default test ablations bench setup gpu-check

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# CLIP's BPE merges ship in this wheel; only the data file is read (its dependencies would pull torchvision).
	$(BIN)/python -m pip install --quiet --no-deps open_clip_torch==3.3.0
	# DeepSpeed (tests/test_distributed.py runs ZeRO-2 on the CPU): PyPI has only its source, whose
	# set-up imports torch, hence after torch and without build isolation; no compiled ops.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation deepspeed==0.19.8
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

default: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m omninegclip.default

ablations: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m omninegclip.default --ablations --finetune_epochs 0.5

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/bench_train.py

# On a GPU machine, from the repository root (no virtual environment: it installs what is missing
# from the wheels in .whl/, see bench/gpu_check.sh): the whole GPU path in about 7 minutes.
gpu-check:
	bash bench/gpu_check.sh
