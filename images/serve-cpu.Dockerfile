# CPU serving image: the tritonserver of the nvidia-pytriton wheel (the binary `cxrlt serve up` runs) with the
# python-backend environment of serving/serve-env.txt + the `dicom` extra, pinned by requirements/serve-lock.txt.
# Serves a repository built with `cxrlt serve build` (the default python-backend ONNX runner), mounted at /models.
# nginx is the pod's front door (`cxrlt serve front-door` writes its configuration; infra/base/triton/).
# The GPU production image is images/serve.Dockerfile (NGC Triton with the native onnxruntime backend).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS python
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv libpython3.11 ca-certificates \
      && rm -rf /var/lib/apt/lists/* /var/cache/apt/*; fi \
 && useradd --uid 1000 --create-home --shell /usr/sbin/nologin triton

# The `dicom` extra's list alone: the environment layer below is keyed on it, not on the rest of pyproject.toml.
FROM python AS dicom-spec
COPY pyproject.toml /spec/
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/spec/pyproject.toml', 'rb'))['project']['optional-dependencies']['dicom']))" > /spec/dicom.txt

FROM python AS builder
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements/serve-lock.txt serving/serve-env.txt /src/
COPY --from=dicom-spec /spec/dicom.txt /src/
RUN python3 -m venv /opt/serve-env \
 && /opt/serve-env/bin/pip install -c /src/serve-lock.txt -r /src/serve-env.txt -r /src/dicom.txt \
 && find /opt/serve-env -name __pycache__ -prune -exec rm -rf {} + \
 && TS=$(echo /opt/serve-env/lib/python3.11/site-packages/pytriton/tritonserver) \
 && mkdir -p /opt/tritonserver/backends/python \
 && ln -s $TS/backends/python/libtriton_python.so $TS/backends/python/triton_python_backend_utils.py \
          $TS/python_backend_stubs/3.11/triton_python_backend_stub /opt/tritonserver/backends/python/ \
 && ln -s $TS/bin/tritonserver /opt/serve-env/bin/tritonserver \
 && chmod 755 $TS/bin/tritonserver $TS/python_backend_stubs/3.11/triton_python_backend_stub $TS/backends/python/libtriton_python.so

FROM python AS serve-cpu
# the pod's front door (nginx): it holds the admin key and passes only the clinical APIs to Triton on loopback
RUN apt-get update && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /etc/nginx/sites-enabled/*
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=builder /opt/serve-env /opt/serve-env
COPY --from=builder /opt/tritonserver /opt/tritonserver
# the python-backend stub embeds the interpreter found on PATH: the serving environment's
ENV PATH=/opt/serve-env/bin:$PATH OMP_NUM_THREADS=1
LABEL org.opencontainers.image.title="cxrlt-serve-cpu" \
      org.opencontainers.image.description="cxrlt Triton CPU server (pytriton's tritonserver, python backend)" \
      org.opencontainers.image.source="https://github.com/cxrlt/cxrlt" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver", "--backend-directory=/opt/tritonserver/backends"]
CMD ["--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true", \
     "--backend-config=python,shm-default-byte-size=33554432", "--backend-config=python,shm-growth-byte-size=16777216"]
