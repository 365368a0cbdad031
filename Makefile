# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use
# (exact pins from constraints.txt) and reinstall only when pyproject.toml or the pins change.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
DEMO_STEPS ?= 300

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: venv
	BIN=$(BIN) examples/demo.sh $(DEMO_OUT) $(DEMO_STEPS)

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
