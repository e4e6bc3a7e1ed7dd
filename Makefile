# The two commands of the README. Both set up a virtual environment first (once; again when a
# requirements file changes).
#   make default   build the image world, pretrain a small CLIP, fine-tune it with Omni-NegCLIP, evaluate
#   make seeds     the default over fine-tuning seeds 0, 1, 2 (same world and base): mean ± std of every metric
#   make test      the test suite (offline, CPU)
#   make style     ruff: lint and format checked (CI runs it)
#   make demo      serve the demo (app.py) on the default's models
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: default seeds test style ablations bench bench-data setup demo browser gpu-check

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-demo.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# CLIP's BPE merges ship in this wheel; only the data file is read (its dependencies would pull torchvision).
	$(BIN)/python -m pip install --quiet --no-deps open_clip_torch==3.3.0
	# DeepSpeed (tests/test_distributed.py runs ZeRO-2 on the CPU): PyPI has only its source, whose
	# set-up imports torch, hence after torch and without build isolation; no compiled ops.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet --no-build-isolation deepspeed==0.19.8
	# The oldest transformers the checkpoints are tested to load with (tests/test_checkpoint_compat.py), in a
	# folder of its own that only that test puts first on the path; the venv keeps the pinned 5.x.
	$(BIN)/python -m pip install --quiet --no-deps --target $(VENV)/transformers-oldest transformers==5.0.0 tokenizers==0.22.2 "huggingface_hub>=1.3,<2"
	# The project itself, editable (pyproject.toml): its console scripts, and the package importable
	# from anywhere (tests, accelerate launch, subprocesses); its dependencies are the ones above.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# tests/test_app.py drives the demo in Debian's headless chromium: installed here when missing (as
# root, with apt-get); where it cannot be, that test is skipped and says why.
APT_OPTS := -o Acquire::Retries=2 -o Acquire::http::Timeout=30 -o DPkg::Lock::Timeout=300
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && echo "installing chromium for tests/test_app.py (apt-get)" \
	  && apt-get $(APT_OPTS) update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get $(APT_OPTS) install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "chromium could not be installed (not root, no apt-get, or no network): tests/test_app.py's browser test will be skipped"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

# The code's style (pyproject.toml [tool.ruff]): lint and format, checked; `make style-fix` applies both.
style: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

style-fix: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

default: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline.default

seeds: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline.default --seeds 0,1,2

demo: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python app.py

ablations: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipeline.default --ablations --finetune_epochs 0.5

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_train

bench-data: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_data --full_size_annotations

# On a GPU machine, from the repository root (no virtual environment: it installs what is missing
# from the wheels in .whl/, see bench/gpu_check.sh): the whole GPU path in about 7 minutes.
gpu-check:
	bash bench/gpu_check.sh
