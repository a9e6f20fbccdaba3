# Two commands for a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first. 2.13.0 matches the local CPU wheel on the
# build machines; on a GPU host `make TORCH_SPEC="torch==2.13.0" install` pulls
# the CUDA build from PyPI instead.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run sync test test-fast bench bench-gpu lint classify clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[bot,worker,dev]"
	touch $(STAMP)

install: $(STAMP)

# Runs the bot (needs DISCORD_TOKEN; see README). `make classify` tries the model
# on the sample photos without Discord.
run: install
	$(PY) -m bot

sync: install
	$(PY) -m bot sync $(if $(GUILD),--guild $(GUILD),)

classify: install
	$(PY) -m model_worker classify samples/*.jpg

# Three test processes (pytest-xdist), one test file each at a time, so a file's bot process and servers stay
# in one process. Most tests wait on subprocesses and sockets, so 3 beat 2 on 2 cores (docs/development.md).
# `make test PARALLEL=` runs them one by one.
PARALLEL ?= -n 3 --dist loadfile

test: install
	$(PY) -m pytest $(PARALLEL)

# Everything but the slow end-to-end tests (bot and worker processes, real services): about a minute.
test-fast: install
	$(PY) -m pytest $(PARALLEL) -m "not slow"

bench: install
	$(PY) -m model_worker bench

# For whoever has a CUDA GPU: a random-weight ViT-L/16-size SigLIP (both towers, 256 px) and the
# three figures (naive loop, engine, vision tower alone) in bfloat16, as one JSON line.
BENCH_GPU_DIR ?= /tmp/wakeru-bench-gpu
bench-gpu: install
	$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'bench-gpu needs a CUDA GPU (torch.cuda.is_available() is False)')"
	test -f $(BENCH_GPU_DIR)/siglip-large/model.safetensors || \
		$(PY) -m model_worker make-checkpoint --family siglip --preset large $(BENCH_GPU_DIR)/siglip-large
	$(PY) -m model_worker bench --model $(BENCH_GPU_DIR)/siglip-large --device cuda --dtype bfloat16 \
		--images 1024 --naive-images 64 --batch 64 --labels 20 --json

# ruff (lint + format check) everywhere, mypy strict on wakeru/ and bot/ (settings in pyproject.toml)
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache
