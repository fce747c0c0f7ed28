# Production serving image: NGC Triton (onnxruntime + python backends, GPU) plus the python-model dependencies.
# The model repository is built by `cxrlt serve build --onnx-runtime native` (init container, see infra/).
ARG TRITON_TAG=24.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
# The python backend in these builds needs numpy < 2 (empty output tensors otherwise).
RUN pip install --no-cache-dir "numpy<2" "opencv-python-headless>=4.8,<4.12" "pydicom>=2.4" "onnxruntime>=1.17"
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", "--strict-readiness=true"]
