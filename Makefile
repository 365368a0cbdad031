# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use
# (exact pins from constraints.txt) and reinstall only when pyproject.toml or the pins change.
# `make test` runs every test (CI calls it); `make test-fast` leaves out those marked slow,
# for the inner loop (652 of the 772 tests). All of them take about 14 minutes on 2 CPU cores,
# 7 of which go to the slow test that trains the tiny preset 600 steps on the demo.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
DEMO_STEPS ?= 600

.PHONY: venv demo test test-fast docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: venv
	BIN=$(BIN) examples/demo.sh $(DEMO_OUT) $(DEMO_STEPS)

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# docs/cli.md is generated from the Typer app (a test fails when it is stale).
docs: venv
	$(BIN)/python docs/gen_cli.py

clean:
	rm -rf $(VENV) runs .pytest_cache
