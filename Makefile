# Two commands for a fresh machine: `make reproduce` and `make test` (see README).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data/default
export MPLBACKEND := Agg

.PHONY: setup reproduce test sync-check nbtest pytest data bench gpu-check docs outputs clean

# Create the virtual environment once and install the package with its dev extras. --no-compile: Python compiles the
# modules it imports on first use, instead of pip compiling every file of torch and the rest up front (on a fresh
# clone here: 88 s instead of 164 s for the three steps).
$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet --no-compile -e ".[dev,export]"
	touch $@

setup: $(VENV)/.installed

# Main job: the reproduction notebook in quick mode through papermill, on the bundled data (built on first
# use), CPU, minutes. Writes runs/reproduce/reproduce_quick.ipynb and figures/, prints the table.
# The set-up's seconds go to dbgan-reproduce, which prints them in its time split.
reproduce:
	@start=$$(date +%s); $(MAKE) --no-print-directory setup; \
	DBGAN_SETUP_SECONDS=$$(( $$(date +%s) - start )) $(BIN)/dbgan-reproduce -f params/quick.yaml

# Notebooks clean and exported (nbdev_clean / nbdev_export change nothing), then all tests.
test: setup sync-check nbtest pytest

sync-check: setup
	@state() { { git status --porcelain -- nbs dbgan_nb; git diff -- nbs dbgan_nb; } | sha1sum; }; \
	before=$$(state); \
	$(BIN)/nbdev_clean; \
	if [ "$$(state)" != "$$before" ]; then echo "nbdev_clean changed notebooks: run it and commit"; git status --short -- nbs; exit 1; fi; \
	$(BIN)/nbdev_export; \
	if [ "$$(state)" != "$$before" ]; then echo "nbdev_export changed dbgan_nb/: notebooks and library out of sync"; git status --short -- dbgan_nb; exit 1; fi; \
	echo "notebooks clean and in sync"

nbtest: setup
	OMP_NUM_THREADS=1 timeout 1200 $(BIN)/nbdev_test --timing

pytest: setup
	OMP_NUM_THREADS=1 timeout 1800 $(BIN)/python -m pytest -q --durations=15 tests

# Performance table (figures/benchmarks.csv and .md); under 10 minutes on 2 CPU cores.
bench: setup
	$(BIN)/dbgan-bench

# On a GPU machine, straight from a checkout (no install, no papermill or nbdev): figures/gpu_check.{json,md}.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -c "import sys; from dbgan_nb.gpu_check import gpu_check_cli; sys.exit(gpu_check_cli())"

# Executing chapters: an IPC kernel (no TCP ports), the inline figure backend (the Makefile's Agg would hide figures),
# JPEG figures at 60 dpi so the committed notebooks stay small enough to read on GitHub.
NBS ?= nbs/index.ipynb nbs/[0-9]*.ipynb
EXECUTE = MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/jupyter nbconvert --execute \
	--ExecutePreprocessor.timeout=-1 --ExecutePreprocessor.kernel_name=python3 --log-level=WARN \
	--ExecutePreprocessor.extra_arguments='["--InlineBackend.figure_formats=jpeg", "--InlineBackend.rc={\"figure.dpi\": 60}"]' \
	--KernelManager.transport=ipc --KernelManager.ip=$$sockets/kernel

# The chapters executed (CPU, quick settings: the reproduction reuses runs/reproduce) and rendered to HTML in _docs/,
# index.html first. MATHJAX_URL=file:///path/MathJax.js?config=TeX-AMS_CHTML-full renders equations offline.
DOCS ?= _docs
MATHJAX_URL ?=
docs: setup
	@mkdir -p $(DOCS)
	@sockets=$$(mktemp -d); for nb in $(NBS); do \
	  echo "executing and rendering $$nb"; \
	  $(EXECUTE) --to html $(if $(MATHJAX_URL),--HTMLExporter.mathjax_url="$(MATHJAX_URL)") --output-dir $(DOCS) $$nb || exit 1; \
	done; rm -rf $$sockets
	@sed -i 's/\(href="[^"#]*\)\.ipynb\(#[^"]*\)\?"/\1.html\2"/g' $(DOCS)/*.html  # chapter links point at the pages
	@echo "wrote $(DOCS)/index.html and $$(ls $(DOCS)/*.html | wc -l) pages"

# The committed outputs: every chapter executed in place (after `make reproduce`, whose runs the reproduction chapter
# reuses), then cleaned of execution counts and metadata. For maintainers; readers see the outputs on GitHub.
outputs: setup
	@sockets=$$(mktemp -d); for nb in $(NBS); do \
	  echo "executing $$nb"; OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(EXECUTE) --to notebook --inplace $$nb || exit 1; \
	done; rm -rf $$sockets
	$(BIN)/nbdev_clean

data: setup
	$(BIN)/dbgan-make-data --out $(DATA)

clean:
	rm -rf runs build dist *.egg-info
