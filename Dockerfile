# segserve image. CPU by default; on a GPU host build with
#   docker build --build-arg ORT_PACKAGE=onnxruntime-gpu==1.31.1 -t segserve:gpu .
# torch's CUDA libraries come from its wheels; the driver comes from the host (NVIDIA container toolkit).
# Unverified here: this workplace has no Docker engine (see docs/deployment.md).
FROM python:3.11-slim-bookworm

ARG ORT_PACKAGE=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SEGSERVE_HOST=0.0.0.0 \
    SEGSERVE_PORT=8000 \
    SEGSERVE_MODEL_REPOSITORY=/models

RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml requirements.lock ./
RUN pip install -r requirements.lock \
 && if [ -n "$ORT_PACKAGE" ]; then pip uninstall -y onnxruntime && pip install "$ORT_PACKAGE"; fi
COPY service ./service
COPY models ./models
COPY loadtest ./loadtest
COPY README.md ./
RUN pip install --no-deps .

# The repository is a volume: export into it once (`segserve export ...`) or mount your own.
VOLUME /models
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s CMD curl -fsS localhost:8000/readyz || exit 1
USER nobody
CMD ["segserve", "serve"]
