# Two commands for a fresh machine (see README): `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first. 2.13.0 matches the local CPU wheel on the
# build machines; on a GPU host `make TORCH_SPEC="torch==2.13.0" install` pulls
# the CUDA build from PyPI instead.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run sync test bench classify clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
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

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m model_worker bench

clean:
	rm -rf $(VENV) .pytest_cache
