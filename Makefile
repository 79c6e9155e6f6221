# Two commands for a newcomer: `make demo` (set up + run the whole flow on embedded defaults)
# and `make test` (set up + run the whole test suite). Everything else is a building block.
PYTHON ?= python3
VENV := .venv
SYNAPSE_VENV := .venv-synapse
SYNAPSE_VERSION := 1.163.2
# pip's own output, cut to what is being installed (a first install takes a few minutes; see README).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PIP_SHOW := grep -E '^(Collecting|Successfully installed)' | sed -e 's/^Collecting /  collecting /' || true

.PHONY: demo test lint check graph bench setup clean constraints

$(VENV)/.installed: pyproject.toml constraints.txt
	@echo "== setting up $(VENV): chatarchief and its test tools (pinned by constraints.txt)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --progress-bar off -c constraints.txt -e '.[dev]' | $(PIP_SHOW)
	touch $@

# Synapse pins Twisted and friends, so it gets a venv of its own (tests and demo start it from there).
$(SYNAPSE_VENV)/.installed: constraints-synapse.txt
	@echo "== setting up $(SYNAPSE_VENV): Synapse $(SYNAPSE_VERSION) for the tests and the demo (pinned by constraints-synapse.txt)"
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install --quiet --upgrade pip
	$(SYNAPSE_VENV)/bin/pip install --progress-bar off -c constraints-synapse.txt 'matrix-synapse==$(SYNAPSE_VERSION)' | $(PIP_SHOW)
	touch $@

# Chatarchief's Synapse module (synapse-module/), installed for real into Synapse's venv; tests and the demo
# also find it without this (they put synapse-module/ on Synapse's PYTHONPATH).
$(SYNAPSE_VENV)/.module-installed: $(SYNAPSE_VENV)/.installed $(wildcard synapse-module/pyproject.toml synapse-module/chatarchief_synapse/*.py)
	$(SYNAPSE_VENV)/bin/pip install --quiet ./synapse-module
	touch $@

setup: $(VENV)/.installed $(SYNAPSE_VENV)/.installed $(SYNAPSE_VENV)/.module-installed

demo: setup
	$(VENV)/bin/chatarchief demo

test: setup
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bridge tests bench scripts
	$(VENV)/bin/ruff format --check bridge tests bench scripts
	$(VENV)/bin/mypy --strict bridge
	$(VENV)/bin/lint-imports

# Before a commit: lint plus every test that needs no Synapse and is not marked slow (hypothesis profile `fast`).
check: lint
	HYPOTHESIS_PROFILE=fast $(VENV)/bin/pytest -q -n auto -m "not synapse and not slow"

# The package's internal import graph (docs/architecture.md); `--layers` collapses it to components.
graph:
	$(VENV)/bin/python scripts/module_graph.py --layers

bench: setup
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/witness.py
	$(VENV)/bin/python bench/scale.py

# After changing dependencies: install, then pin what is installed (both venvs) for make setup and CI.
constraints: setup
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^chatarchief' > constraints.tmp
	{ echo "# Exact versions \`make setup\` and CI install into .venv (pip install -c). Regenerate after changing"; \
	  echo "# dependencies: make constraints"; cat constraints.tmp; } > constraints.txt
	$(SYNAPSE_VENV)/bin/pip freeze | grep -iv chatarchief > constraints.tmp
	{ echo "# Exact versions \`make setup\` and CI install into .venv-synapse. Regenerate: make constraints"; \
	  cat constraints.tmp; } > constraints-synapse.txt
	rm constraints.tmp

clean:
	rm -rf $(VENV) $(SYNAPSE_VENV) demo-data build *.egg-info synapse-module/build synapse-module/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
