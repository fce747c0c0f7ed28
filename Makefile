# The two commands a newcomer runs: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
# Both create .venv on first use and are fast when it is already there.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_run

.PHONY: setup demo test lint compile clean kubectl

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m cxrlt.demo --workdir $(DEMO_DIR)

# kubectl renders infra/ overlays in the tests; Debian's package, installed when missing (tests skip without it).
kubectl:
	@command -v kubectl >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq kubectl) \
	  || echo "kubectl could not be installed: the infra render tests will be skipped"

test: $(STAMP) kubectl
	$(PY) -m ruff check src components pipelines serving infra bench tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src components pipelines serving infra bench tests
	$(PY) -m ruff format --check src components pipelines serving infra bench tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
