# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
# `make test-fast` is `make test` without the QEMU guests (the tests marked `qemu`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,dask,parquet]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/pvsim run scenarios/quickstart.toml --out results/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15 -m 'not qemu'

# the twin against the plain-SimPy reference model at 20 000 and 100 000 devices, three interleaved
# rounds: about 3 minutes on a quiet 2-core machine (`pvsim bench --help`)
bench: $(STAMP)
	$(BIN)/pvsim bench --repeat 3

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy shared/

clean:
	rm -rf $(VENV) results build *.egg-info

# The long fuzz campaign against a live daemon, as root (docs/device.md "Hostile input").
.PHONY: fuzz
fuzz: $(STAMP)
	PVTWIN_FUZZ_REQUESTS=$${PVTWIN_FUZZ_REQUESTS:-100000} PVTWIN_FUZZ_RANDOM=1 \
	    $(BIN)/python -m pytest -n 0 -s tests/test_ctrl_fuzz.py
