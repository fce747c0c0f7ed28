# The two commands a newcomer runs: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
# Both create .venv on first use and are fast when it is already there.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_run

.PHONY: setup demo test lint compile clean system-tools

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# The Triton serving environment (numpy < 2 python backend) is part of setup: created once, instant afterwards.
demo: $(STAMP)
	$(PY) -c "from serving.server import ensure_serving_env; ensure_serving_env()"
	$(PY) -m cxrlt.demo --workdir $(DEMO_DIR)

# Debian packages the tests use, installed when missing (the tests that need them skip, saying why, without them):
# kubectl renders the infra/ overlays; bubblewrap runs the pods' commands under their constraints.
system-tools:
	@command -v kubectl >/dev/null 2>&1 && command -v bwrap >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq kubectl bubblewrap) \
	  || echo "kubectl/bubblewrap could not be installed: the infra and pod-constraint tests will be skipped"

test: $(STAMP) system-tools
	$(PY) -m ruff check src components pipelines serving infra bench tests
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src components pipelines serving infra bench tests
	$(PY) -m ruff format --check src components pipelines serving infra bench tests

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
