# Everything a user types. `make help` lists the targets.
#
#   make train PROJECT=mnist trainer.max_epochs=3 'model.net.width=64'
#   make train PROJECT=mnist ARGS='-m model.optimizer.lr=0.001,0.01'
#   make train PROJECT=mnist data.synthetic=true DRY=1     # print the Hydra command, run nothing
#
# key=value words go to Hydra unchanged and in the order typed (common/launcher.py reads them
# from MAKEFLAGS); UPPERCASE words are make's own: PROJECT, ARGS, DRY, PORT, NAME.
#
# Verbs (train, eval, predict, sample, ...) are found on disk: every configs/<verb>.yaml with an
# entry point common/<verb>.py is a target. A new verb is those two files, no edit here.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PROJECT ?= mnist
ARGS ?=
PORT ?= 6006
export PROJECT ARGS DRY

# glibc hands freed blocks over a few MB back to the OS and page-faults them in again on the
# next step: on CPU that was ~20% of the mnist step time. Keep them (RSS stays at its peak).
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 268435456

FIXED := help install new test test-all bench bench-ddp bench-serve lint format list tensorboard clean
VERBS := $(filter-out $(FIXED),$(foreach v,$(basename $(notdir $(wildcard configs/*.yaml))),$(if $(wildcard common/$(v).py),$(v))))

.DEFAULT_GOAL := help
.PHONY: $(FIXED) $(VERBS)

help: ## Show this help
	@echo "Usage: make <target> [PROJECT=<name>] [key=value ...] [ARGS='<other hydra args>'] [DRY=1]"
	@echo
	@for v in $(VERBS); do printf "  %-12s %s\n" $$v "$$(sed -n '/^# /{s/^# *//p;q}' configs/$$v.yaml)"; done
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Projects (PROJECT=...):"
	@if [ -x $(PY) ]; then $(PY) -m common.launcher list | sed 's/^/  /'; else echo "  (run make install first)"; fi

install: $(VENV)/.installed ## Create .venv and install the repo with its dev tools (fast when done)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@
	@echo "installed into $(VENV)"

$(PY):
	@echo "error: $(VENV) is missing: run 'make install' first" >&2; exit 1

$(VERBS): $(PY)
	@$(PY) -m common.launcher $@

new: $(PY) ## Start a project from the template: make new NAME=<name>
	@$(PY) -m common.scaffold "$(NAME)"

test: $(PY) ## The quick loop: every tier but the slow tests (minutes on 2 CPU cores)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: $(PY) ## Every test, the slow ones included: what CI runs
	$(PY) -m pytest $(ARGS)

bench: $(PY) ## Benchmarks: make-train stack vs plain loop (ARGS go to it) and its per-step overhead, tensor loader vs DataLoader, audio features, RL env steps/s, export parity and ORT vs eager, int8 paths, swish variants (C++ op), detection box logic, CPU precision and threads, ViT step
	$(PY) -m benchmarks.stack $(ARGS)
	$(PY) -m benchmarks.stack --overhead
	$(PY) -m benchmarks.loaders
	$(PY) -m benchmarks.audio
	$(PY) -m benchmarks.rl
	$(PY) -m benchmarks.export
	$(PY) -m benchmarks.quantize
	$(PY) -m benchmarks.extensions
	$(PY) -m benchmarks.detection
	$(PY) -m benchmarks.cpu_defaults
	$(PY) -m benchmarks.vit

bench-serve: $(PY) ## Load test of make serve on 127.0.0.1: req/s, p50/p95/p99 ms, errors; torch vs onnx, batching off and on
	$(PY) -m benchmarks.serve $(ARGS)

bench-ddp: $(PY) ## DDP scaling: samples/s with 1 and 2 processes, and the efficiency
	$(PY) -m benchmarks.ddp $(ARGS)

lint: $(PY) ## Ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(PY) ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

list: $(PY) ## The projects, one line each
	@$(PY) -m common.launcher list

tensorboard: $(PY) ## Serve logs/ in TensorBoard on port 6006 (PORT=...)
	$(VENV)/bin/tensorboard --logdir logs --port $(PORT) $(ARGS)

clean: ## Remove logs and caches (keeps .venv and data)
	rm -rf logs .pytest_cache .ruff_cache
