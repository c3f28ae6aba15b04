# Two entry points for a fresh machine (Python 3.11, Java 17+, Maven):
#   make demo   -> set everything up, then run the whole product end to end on generated data
#   make test   -> set everything up, then run the full test suite
# Everything else here is a step those two call.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_ARGS ?=
# `make demo` writes its reports into this repository's reports/ folder (any absolute path works).
export WORKBENCH_REPORTS_DIR ?= $(CURDIR)/reports

.PHONY: setup demo test lint kafka-jars browser postgresql clean constraints

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

setup: $(STAMP) kafka-jars

# Fetches Apache Kafka from Maven Central once into the user cache (no-op when cached).
kafka-jars: $(STAMP)
	$(BIN)/workbench kafka fetch

# Headless Chromium for the report-rendering test (Debian package; skipped when not root/apt-less).
browser:
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; the browser test will be skipped" >&2; \
	  else echo "warning: chromium not installed; the browser test will be skipped" >&2; fi; }

# PostgreSQL server binaries for the several-machines tests: the tests start a private cluster
# (Debian package; the tests are skipped when not root/apt-less and it is missing).
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "warning: could not install postgresql; the PostgreSQL tests will be skipped" >&2; \
	  else echo "warning: postgresql not installed; the PostgreSQL tests will be skipped" >&2; fi; }

demo: setup
	$(BIN)/workbench demo $(DEMO_ARGS)

test: setup browser postgresql
	$(BIN)/ruff check workbench tests benchmarks notebooks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check workbench tests benchmarks notebooks

# Re-resolves pyproject.toml's ranges in a scratch venv and pins the result (after changing a dependency).
constraints:
	rm -rf .venv-constraints
	$(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/pip install --quiet --upgrade pip
	.venv-constraints/bin/pip install --quiet -e '.[test]'
	{ sed -n 1,2p constraints.txt; .venv-constraints/bin/pip freeze --exclude-editable | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
