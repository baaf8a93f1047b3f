# Every target sets up .venv itself: a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: venv test lint typecheck pytest demo bench soak docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,prometheus,sensing,libp2p,demo,docs]'
	# py-libp2p needs trio-typing at run time, but its trio/outcome stubs shadow the
	# inline types those packages ship; remove the stubs so mypy reads the real ones.
	rm -rf "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/trio-stubs \
	       "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/outcome-stubs
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy --strict trio_connmgr

pytest: venv
	$(BIN)/python -m pytest

test: lint typecheck pytest

demo: venv
	$(BIN)/python -m trio_connmgr demo

bench: venv
	$(BIN)/python -m benchmarks

soak: venv
	TRIO_CONNMGR_SOAK=1 $(BIN)/python -m pytest tests/reliability -q -o timeout=1800

docs: venv
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache .hypothesis
