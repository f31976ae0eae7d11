# Two commands on a fresh machine: `make run` (the default study) and `make test`.
# Both are idempotent: the venv and the dataset are installed once, then reused.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CORES  ?= all
export PATH := $(CURDIR)/$(BIN):$(PATH)
# torch.compile'd kernels (winsorized, RM3/M3 medians) are cached here: only the first job of a
# study pays the cold compile (its cost: README, "Gradient variants")
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# this machine's pip config lists extra local indexes; their "is ignored" lines are noise
QUIET_PIP := 2>&1 | { grep -v 'is ignored: it is neither' || true; }

.PHONY: run test bench dataset browser venv dvc-repro clean

run: venv dataset
	$(BIN)/snakemake --cores $(CORES)
	@echo "the study's page: results/$$(sed -n 's/^study: *//p' params.yaml)/report.html"

# two workers: most tests wait on a subprocess (a stage, an engine), so two run side by side
test: venv dataset browser
	$(BIN)/python -m pytest -q -n 2 --durations=10

bench: venv
	$(BIN)/python -m benchmarks

dvc-repro: venv dataset
	$(BIN)/dvc repro

# Mutation testing of one module (cosmic-ray's mutants, in copies of the checkout): only the tests
# that tests/mutation_map.yaml lists for it; prints the score and each survivor as file:line,
# writes them to results/mutants/<module>.txt; tests/mutants_equivalent.txt keeps the equivalent
# ones. Without M: every module of the map (FROM=<module>: from that one on), then the table
# results/mutants/summary.txt.
.PHONY: mutants
mutants: venv
	$(BIN)/python scripts/mutants.py $(if $(M),$(M),--all $(if $(FROM),--from $(FROM)))

# On a machine with an NVIDIA GPU: the smoke study on CUDA and on the CPU, compared within the
# tolerances stated in scripts/gpu_check.py (one line and exit 1 where there is no CUDA)
.PHONY: gpu-check
gpu-check: venv dataset
	$(BIN)/python scripts/gpu_check.py

venv: $(STAMP)

# The venv is installed from requirements.lock: every distribution at its resolved version (pip
# included), then this checkout editable without resolving again; pip check confirms the lock
# satisfies pyproject.toml's ranges. torch 2.14.1 / torchvision 0.29.1: pip takes them from
# local wheels on the lab machines. The stamp makes it run once per change of either file.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock $(QUIET_PIP)
	$(BIN)/python -m pip install --quiet --no-deps -e . $(QUIET_PIP)
	$(BIN)/python -m pip check
	touch $(STAMP)

# After a change of pyproject.toml's dependencies: resolve them once into the venv, then pin the
# whole resolved set (`pip freeze`: name==version, no hashes) and mark the venv as installed.
.PHONY: lock
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(QUIET_PIP)
	{ echo "# The resolved Python environment of 'make venv' (Python 3.11, Linux x86_64): every"; \
	  echo "# distribution at the version the Makefile installs. Written by 'make lock' (pip freeze);"; \
	  echo "# pyproject.toml keeps the ranges for installing cglib into another environment."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock
	touch $(STAMP)

# Fashion-MNIST from Debian's package (no download at run time); needs root or sudo once.
dataset: $(FASHION)

$(FASHION):
	@if [ -n "$$(ls data/raw/fashion_mnist 2>/dev/null)" ]; then echo "using data/raw/fashion_mnist"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; fi

# Headless Chromium for tests/test_report.py (renders results/<study>/report.html to PNG and PDF as a
# person would see it); Debian's package, installed once like the dataset.
BROWSER := /usr/bin/chromium
browser: $(BROWSER)

$(BROWSER):
	@if command -v chromium >/dev/null; then echo "using $$(command -v chromium)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; fi

# Two or more finished studies side by side (their names, or results folders): one page and CSVs
# in results/compare/
STUDIES ?=
.PHONY: compare
compare: venv
	$(BIN)/python stages/compare.py $(STUDIES) --out results/compare

# The README's picture of the report: the first screen of $(REPORT) (the default study's page
# after `make run`), as headless Chromium renders it at 1280 px
REPORT ?= results/default/report.html
SHOT   ?= docs/report.png
.PHONY: screenshot
screenshot: browser
	test -f $(REPORT) || { echo "error: $(REPORT): no report yet; run make run first" >&2; exit 1; }
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir=$$(mktemp -d) \
	  --window-size=1280,1400 --screenshot=$(abspath $(SHOT)) "file://$(abspath $(REPORT))" 2>/dev/null

clean:
	rm -rf results data/prepared .snakemake
