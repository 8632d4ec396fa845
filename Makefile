# The two commands: `make demo` (set-up + the whole job end to end) and `make test` (what CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
WEB_STAMP := infer/web/node_modules/.package-lock.json
SHARED := $(abspath ../shared/quickdraw)
SHARED_BITMAPS := $(SHARED)/bitmaps

# The demo writes where the commands look by default, so `qd-infer some/folder` works right after it.
DATA   := artifacts/data
RUN    := artifacts/runs/demo
EXPORT := artifacts/exports/demo
DEMO   := artifacts/demo
# Sized by measurement (docs/training.md, "The demo's size": times on two CPUs and the other sizes tried):
# 3 epochs at batch 128 over 700 drawings per category reach about 87% test top-1 on the 27 bundled categories.
DEMO_PER_CATEGORY := 700
DEMO_EPOCHS := 3
DEMO_BATCH := 128
# Categories spelled the same in the bundled copy and in Google's bucket (the fallback source).
DEMO_CATEGORIES := airplane apple banana bicycle bird book boomerang cat circle clock cloud crown diamond \
                   dog eye fish flower horse house rainbow skull square star train tree
ifneq ($(wildcard $(SHARED_BITMAPS)/*.npy),)
DEMO_FETCH := --all --source $(SHARED_BITMAPS)
else
DEMO_FETCH := $(DEMO_CATEGORIES)
endif

.PHONY: setup demo test chromium clean clean-demo

# --no-compile: Python compiles only the modules a command imports, on first use (pip would compile all of
# torch up front: 30 s of the set-up on a 2-core machine). The demo needs no test tools, so they come separately.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-compile -c constraints.txt -e ".[train,export,eval]"
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-compile -c constraints.txt -e ".[train,export,eval,dev,ray]"
	touch $(DEV_STAMP)

# The browser demo's runtime (onnxruntime-web), served locally by qd-demo.
$(WEB_STAMP): infer/web/package.json infer/web/package-lock.json
	npm ci --prefix infer/web --ignore-scripts --no-audit --no-fund

setup: $(STAMP) $(WEB_STAMP)

$(RUN)/best.pt: | setup
	$(BIN)/qd-data fetch $(DEMO_FETCH) --max-per-category $(DEMO_PER_CATEGORY) --data $(DATA)
	$(BIN)/qd-data list --data $(DATA)
	rm -rf $(RUN)
	$(BIN)/qd-train --data $(DATA) --max-per-category $(DEMO_PER_CATEGORY) --epochs $(DEMO_EPOCHS) --batch-size $(DEMO_BATCH) --out $(RUN)

$(EXPORT)/model.onnx: $(RUN)/best.pt
	$(BIN)/qd-export $(RUN)/best.pt --format all --out $(EXPORT)

demo: setup $(EXPORT)/model.onnx
ifneq ($(wildcard $(SHARED)/strokes/*.ndjson),)
	$(BIN)/python -m qd.infer.samples --shared $(SHARED) --out $(DEMO)/drawings
	$(BIN)/qd-infer $(DEMO)/drawings --model $(EXPORT) --top 3
else
	@echo "no bundled drawings at $(SHARED): try qd-infer on your own, e.g. $(BIN)/qd-infer my-drawings/ --top 3"
endif
	$(BIN)/qd-eval --model $(EXPORT) --checkpoint $(RUN)/best.pt --out $(DEMO)/eval
	@echo
	@echo "Artifacts:"
	@echo "  data        $(DATA)/"
	@echo "  checkpoint  $(RUN)/best.pt (and last.pt)"
	@echo "  models      $(EXPORT)/ (model.onnx, model.int8.onnx, model.mlpackage, model.canvas.onnx, model.canvas.mlpackage, labels.txt, model.json)"
	@echo "  drawings    $(DEMO)/drawings/"
	@echo "  report      $(DEMO)/eval/ (report.json, confusion.png, mistakes.png, calibration.png)"
	@echo
	@echo "Draw in your browser: $(BIN)/qd-demo   then open http://127.0.0.1:8765/"

# Browser tests drive Debian's Chromium (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }

# The suite runs in one process per core, at most 4 (each process builds the session fixtures: a small
# trained model and its exports), so a 2-core CI machine uses both cores.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')

test: setup $(DEV_STAMP) chromium
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean-demo:
	rm -rf $(DATA) $(RUN) $(EXPORT) $(DEMO)

clean: clean-demo
	rm -rf $(VENV) infer/web/node_modules
