# Production serving image: NGC Triton (onnxruntime + python backends, GPU) plus the python-model dependencies.
# The model repository is built by `cxrlt serve build --onnx-runtime native` (init container, see infra/).
# 25.07 or later: fixes for the python-backend and HTTP-server vulnerabilities published in 2025
# (CVE-2025-23319/23320/23334, CVE-2025-23310/23311).
ARG TRITON_TAG=25.08-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
# The python backend in these builds needs numpy < 2 (empty output tensors otherwise). DICOM decoding: the `dicom`
# extra of pyproject.toml, the one list the training environment and `cxrlt serve up` install too.
COPY pyproject.toml /tmp/cxrlt-pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/cxrlt-pyproject.toml', 'rb'))['project']['optional-dependencies']['dicom']))" > /tmp/dicom.txt \
 && pip install --no-cache-dir "numpy<2" "opencv-python-headless>=4.8,<4.12" "onnxruntime>=1.17" -r /tmp/dicom.txt \
 && rm /tmp/dicom.txt /tmp/cxrlt-pyproject.toml
# the pod's front door (nginx): it holds the admin key and passes only the clinical APIs to Triton on loopback
RUN apt-get update && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/*
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
# Production by default, like the CPU image: a fixed repository that no client can load or unload models in. In the
# Deployment Triton listens on loopback only, behind nginx, which holds the admin key and terminates TLS
# (infra/base/triton/deployment.yaml).
CMD ["--model-repository=/models", "--model-control-mode=none", "--strict-readiness=true"]
