# The two commands a newcomer runs: `make demo` (set up + run the main job) and `make test` (set up + run the tests).
# Both create .venv on first use and are fast when it is already there.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= demo_run

.PHONY: setup demo test lint compile clean system-tools container-tools debian-base images images-if-possible images-current

# Pinned by requirements/lock.txt (the images install the same pins).
$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements/lock.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

# The Triton serving environment (numpy < 2 python backend) is part of setup: created once, instant afterwards.
# `make demo CONTAINERS=1`: the same demo with the pipeline's components and Triton in the images (built first).
demo: $(STAMP) $(if $(CONTAINERS),images-current)
	$(PY) -c "from serving.server import ensure_serving_env; ensure_serving_env()"
	$(VENV)/bin/cxrlt demo --workdir $(DEMO_DIR) $(if $(CONTAINERS),--containers)

# Debian packages the tests use, installed when missing (the tests that need them skip, saying why, without them):
# kubectl renders the infra/ overlays; bubblewrap runs the pods' commands under their constraints; nginx is the
# production server's front door; Orthanc (with its DICOMweb plugin) is the PACS, dcmtk's storescu the modality and
# dicom3tools' dciodvfy the SR validator of the DICOM gateway tests; prometheus' promtool checks and unit-tests the
# alert rules.
NGINX := $(firstword $(shell command -v nginx 2>/dev/null) $(wildcard /usr/sbin/nginx))
ORTHANC := $(firstword $(shell command -v Orthanc 2>/dev/null) $(wildcard /usr/sbin/Orthanc))
system-tools:
	@command -v kubectl >/dev/null 2>&1 && command -v bwrap >/dev/null 2>&1 && test -n "$(NGINX)" && \
	  test -n "$(ORTHANC)" && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && \
	  command -v storescu >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq kubectl bubblewrap nginx orthanc orthanc-dicomweb dcmtk dicom3tools prometheus) \
	  || echo "kubectl/bubblewrap/nginx/orthanc/dcmtk/dicom3tools/prometheus could not be installed: the tests that need them will be skipped"

test: $(STAMP) system-tools images-if-possible
	$(PY) -m ruff check src components pipelines serving infra bench tests images
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q --durations=25

# The container tests run the images: built here where podman can be installed (about 10 minutes the first time on
# 2 cores, cached afterwards); where it cannot, those tests skip and say why.
images-if-possible:
	@$(MAKE) --no-print-directory images IMAGES_ARGS=--skip-current || \
	  echo "the images could not be built: the container tests will be skipped"

images-current:
	@$(MAKE) --no-print-directory images IMAGES_ARGS=--skip-current

lint: $(STAMP)
	$(PY) -m ruff check src components pipelines serving infra bench tests images
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m ruff format --check src components pipelines serving infra bench tests images

clean:
	rm -rf $(DEMO_DIR) .pytest_cache

# Containers without a Docker daemon: podman + runc (settings in images/containers.conf, used via CONTAINERS_CONF;
# /etc is not changed) and a Debian bookworm base made with debootstrap, since container registries cannot be reached
# here. On a machine that can pull, `make images BASE_IMAGE=python:3.11-slim`.
export CONTAINERS_CONF := $(CURDIR)/images/containers.conf
BASE_IMAGE ?= localhost/debian-min:bookworm
ROOTFS := $(CURDIR)/.rootfs-bookworm

container-tools:
	@command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq podman runc debootstrap)

debian-base: container-tools
	@podman image exists localhost/debian-min:bookworm || \
	  (rm -rf $(ROOTFS) && debootstrap --variant=minbase bookworm $(ROOTFS) >/dev/null && \
	   tar -C $(ROOTFS) -c . | podman import - localhost/debian-min:bookworm && rm -rf $(ROOTFS))

# train, tools and serve-cpu images (names from src/cxrlt/platform.py), then their sizes
images: $(STAMP) $(if $(filter localhost/debian-min:bookworm,$(BASE_IMAGE)),debian-base,container-tools)
	$(PY) images/build.py --base-image $(BASE_IMAGE) $(IMAGES_ARGS)
