# cxrtl: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= demo_out

.PHONY: install demo test test-fast bench lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

# The main job on the embedded default: synthesise both datasets, reproduce the paper's three experiments
# at the quick profile (random init when ImageNet weights cannot be had), print where the report is.
demo: $(STAMP)
	$(PY) -m cxrtl data synth $(DEMO)/data
	$(PY) -m cxrtl reproduce --profile quick --allow-random-init \
		--covid $(DEMO)/data/COVID-19_Radiography_Dataset --pneumonia $(DEMO)/data/chest_xray \
		--out $(DEMO)/reproduction --cache-dir $(DEMO)/cache

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)      # everything but the few end-to-end tests marked slow
	$(PY) -m pytest -q -m "not slow"

# Every benchmark, each printing the machine first and its headline ratio last; figures and the machine into
# benchmarks/results.json. `make bench BENCH_ARGS=--quick` for smaller inner sizes, `--only NAME,...` for some.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks examples
	$(VENV)/bin/ruff format src tests benchmarks examples

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info src/*.egg-info
