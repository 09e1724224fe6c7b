# Two commands a newcomer needs: `make demo` (train and sample Shakespeare) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned to the CPU wheel version; an unpinned torch would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test lint install bench docs hooks clean

$(BIN)/gptlab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/gptlab

install: $(BIN)/gptlab

# ~5 minutes on 2 CPU cores: char-level Shakespeare, then a sample, the loss plot and the checkpoint paths.
# Writes out/demo (restarted on every `make demo`); continue it with
#   .venv/bin/gptlab train --preset=demo --trainer.resume=True --trainer.max_iters=4000
demo: install
	$(BIN)/gptlab train --preset=demo --system.overwrite=True

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/run_all.py

# After editing code that docs/ cites, or a report: redraw the figures and regenerate the pages' generated blocks
# (tests/test_docs.py fails until this is run).
docs: install
	$(BIN)/python docs/make_figures.py
	$(BIN)/python docs/sync_docs.py

# For developers: check docs and ruff before every commit.
hooks:
	install -m 755 tools/pre-commit .git/hooks/pre-commit

clean:
	rm -rf $(VENV) out .pytest_cache
