# CPU steps (validation, preprocessing, evaluation, export, registration) and the MLflow server (with basic auth).
FROM python:3.11-slim
WORKDIR /opt/cxrlt
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
# CPU-only torch first, so the project's torch==2.14.1 pin is already satisfied without the CUDA libraries.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY src ./src
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY configs ./configs
RUN pip install --no-cache-dir -e '.[mlops,serve,dicom]' "mlflow[auth]"
USER 1000
ENTRYPOINT ["cxrlt"]
