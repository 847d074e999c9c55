# Two commands on a fresh machine: `make demo` and `make test` (both create .venv and install on first use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdbench-installed

.PHONY: demo smoke report test test-exhaustive install clean-results

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The demo: the demo table on the real Fashion-MNIST (about 6 minutes on 2 CPU cores), then its report page.
demo: $(STAMP)
	$(PY) -m benchmarks.run demo --report

# Every runnable cell of table1 for a few steps on generated data (shows that cells run end to end; SMOKE numbers).
smoke: $(STAMP)
	$(PY) -m benchmarks.run table1 --preset smoke --report

# The report site of every table from the default store (results/report/index.html).
report: $(STAMP)
	$(PY) -m benchmarks.report

# The suite CI runs (~10 min on 2 cores); the every-method x every-pair grids are `make test-exhaustive`.
test: $(STAMP)
	$(PY) -m pytest -q -m "not exhaustive"

test-exhaustive: $(STAMP)
	$(PY) -m pytest -q -m exhaustive

clean-results:
	rm -rf results/smoke tables/results/*.smoke.*
