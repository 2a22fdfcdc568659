# synthcat: `make run` and `make test` are the whole set-up on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: run test setup system-deps models train-models train-lora eval-models clean

# torch/torchvision are pinned to the wheels this machine keeps on disk (see README).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: system-deps $(STAMP) models

# System packages (infra/apt-packages.txt: chromium, fonts): apt-get installs the missing ones as
# root, or through sudo; when all are present apt is not called at all.
system-deps:
	@infra/apt-install.sh infra/apt-packages.txt

# The tiny models, then the memorization gate's default reference: an index of the tiny training
# set (models/tiny-reference/, git-ignored; about a minute the first time, a file check after).
models: $(STAMP)
	$(BIN)/python -c "from pipeline.models.presets import DEFAULT_MODELS_DIR as d; from pipeline.models.tiny import ensure_tiny_models as e; print('tiny models in', e(d))"
	$(BIN)/python -c "from pipeline.models.presets import DEFAULT_MODELS_DIR as d; from pipeline.models.training_reference import ensure_training_reference as e; print('tiny reference index in', e('tiny', d, d / 'tiny' / 'clip'))"

# Retrain the embedded tiny models from scratch (~1 h 35 min on 2 idle CPU cores, MODEL_CARD.md) and measure them.
train-models: $(STAMP)
	$(BIN)/python -m pipeline.models.train --out models/tiny

# Retrain the example brand's LoRA adapter (Northwind look) on the tiny model (~5 min on 2 CPU cores).
train-lora: $(STAMP)
	$(BIN)/python -m pipeline.models.train_lora --model models/tiny/diffusion --out models/tiny/lora/northwind-look

eval-models: $(STAMP)
	$(BIN)/python -m pipeline.models.evaluate --json models/tiny/evaluation.json

run: setup
	$(BIN)/synthcat run --manifest examples/catalog.csv --config examples/job.yaml --out out

# Two pytest-xdist workers; each test module stays on one worker (tests/conftest.py).
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

clean:
	rm -rf out .pytest_cache
