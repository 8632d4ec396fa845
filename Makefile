# The two commands: `make demo` (the whole job end to end) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SHARED_BITMAPS := $(abspath ../shared/quickdraw/bitmaps)
DEMO   := artifacts/demo

.PHONY: setup demo test clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[train,export,eval,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	@echo "demo: stages are added here as they land"

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) artifacts/demo
