# Training image: CUDA PyTorch (the PyPI wheels bundle the CUDA libraries; the host needs only the NVIDIA driver and
# container toolkit) + the cxrlt project + kfp (KFP components run with install_kfp_package=False).
FROM python:3.11-slim
WORKDIR /opt/cxrlt
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 git && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY configs ./configs
RUN pip install --no-cache-dir -e '.[mlops,dicom]'
USER 1000
ENTRYPOINT ["cxrlt"]
