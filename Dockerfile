# segserve image, in three stages:
#   build   - the build side (`.[export]`: onnx, onnxscript, tqdm) exports the bundled models into /models
#   wheel   - the runtime-only wheel, built from a tree holding service/ alone (so: package `segserve` only)
#   runtime - that wheel + its runtime dependencies (no onnx, onnxscript, tqdm, locust, matplotlib,
#             hdrhistogram) + /models, run as a non-root user
# Every stage pins through requirements.lock (as constraints: only what the stage needs is installed).
#
#   docker build -t segserve .                                                  # CPU ONNX Runtime
#   docker build --build-arg ORT_PACKAGE=onnxruntime-gpu==1.31.1 -t segserve:gpu .
#   docker build --target build -t segserve:build .                            # has `segserve export`
# torch's CUDA libraries come from its wheels; the driver comes from the host (NVIDIA container toolkit).
# Unverified here: this workplace has no Docker engine (see docs/deployment.md).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md requirements.lock ./
COPY service ./service
COPY models ./models
RUN pip install -c requirements.lock ".[export]"
# As `make models` does, without the pretrained downloads: the image is built the same offline or not.
RUN segserve export --model lraspp_mobilenet_v3_large --name shapes_lraspp --weights bundled:shapes_lraspp \
        --input-size 256x256 --video-split --repository /models \
 && segserve export --model maskrcnn_mobilenet_v3_large_fpn --name shapes_maskrcnn --weights bundled:shapes_maskrcnn \
        --repository /models

FROM ${BASE_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only the runtime: setup.py packages the folders present, so this wheel holds `segserve` alone.
COPY pyproject.toml setup.py README.md ./
COPY service ./service
RUN pip wheel --no-deps -w /wheels .

FROM ${BASE_IMAGE} AS runtime
ARG ORT_PACKAGE=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEGSERVE_HOST=0.0.0.0 \
    SEGSERVE_PORT=8000 \
    SEGSERVE_MODEL_REPOSITORY=/models
COPY requirements.lock /tmp/requirements.lock
COPY --from=wheel /wheels /tmp/wheels
RUN pip install -c /tmp/requirements.lock /tmp/wheels/segserve-*.whl \
 && if [ -n "$ORT_PACKAGE" ]; then pip uninstall -y onnxruntime && pip install "$ORT_PACKAGE"; fi \
 && rm -rf /tmp/wheels /tmp/requirements.lock \
 && groupadd --system --gid 10001 segserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/segserve --create-home segserve
# Owned by root, readable by all: the server only reads its repository (exception: ONNX Runtime's
# TensorRT EP writes its engine cache next to model.onnx, so a TensorRT setup needs a writable mount).
# Mount another repository at /models to serve other models (export them with the `build` image).
COPY --from=build /models /models
WORKDIR /home/segserve
USER 10001:10001
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:${SEGSERVE_PORT:-8000}/readyz', timeout=2)" || exit 1
CMD ["segserve", "serve"]
