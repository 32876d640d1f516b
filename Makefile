# Quickstart: `make run` (trains the CrossQ driver on the bundled default track, 20 min on a CPU) and `make test`.
# Both create .venv with Python 3.11 and install the project on first use; `make test` also installs
# Debian's chromium (`make browser`) for the dashboard's browser test.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run baseline test setup browser

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/python scripts/train_crossq.py --backend surrogate

baseline: $(VENV)/.installed
	$(BIN)/python scripts/drive_baseline.py

# The dashboard's browser test drives Debian's chromium through Playwright (no Playwright download).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest -n 2 --durations=15
