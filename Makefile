# One entry point for people and CI. `make test` and `make demo` do all set-up on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test fuzz check lint typecheck layers pytest demo mosquitto postgresql chromium docs bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

mosquitto:
	@bash scripts/ensure-mosquitto.sh

postgresql:
	@bash scripts/ensure-postgresql.sh

chromium:
	@bash scripts/ensure-chromium.sh

## every check CI runs: ruff, mypy --strict, import-linter, pytest
test: $(STAMP) mosquitto postgresql chromium
	@bash scripts/check

## property-based tests with new random cases and 20x the examples, bounded by FUZZ_SECONDS (default 1800)
fuzz: $(STAMP) mosquitto postgresql chromium
	@bash scripts/fuzz

## one stage of `make test` alone: ruff, mypy --strict or import-linter (scripts/check names the folders)
lint typecheck layers: $(STAMP)
	@bash scripts/check $@

pytest: $(STAMP) mosquitto postgresql chromium
	@bash scripts/check pytest

docs: $(STAMP)
	$(BIN)/python scripts/gen_protocol_docs.py > docs/protocol.md
	$(BIN)/python scripts/gen_config_docs.py > docs/configuration.md

demo: $(STAMP) mosquitto
	@bash scripts/demo.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
