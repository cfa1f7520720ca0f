# segserve image, in three stages:
#   deps    - a venv (/opt/venv) with the runtime's dependencies from requirements.lock
#   build   - the build side (`.[export]`: onnx, onnxscript, tqdm) exports the bundled models into /models
#   loadtest- the load harness (locust web UI), for compose
#   wheel   - the runtime-only wheel, built from a tree holding service/ alone (so: package `segserve` only)
#   runtime - that wheel + its runtime dependencies (no onnx, onnxscript, tqdm, locust, matplotlib,
#             hdrhistogram) + /models, run as a non-root user
# Every stage pins through requirements.lock (as constraints: only what the stage needs is installed).
#
#   docker build -t segserve .                                                  # CPU ONNX Runtime
#   docker build --build-arg ORT_PACKAGE=onnxruntime-gpu==1.31.1 -t segserve:gpu .
#   docker build --target build -t segserve:build .                            # has `segserve export`
# torch's CUDA libraries come from its wheels; the driver comes from the host (NVIDIA container toolkit).
# The CPU image is built and run by `make docker-test` (docs/deployment.md); the GPU build is unverified.
ARG BASE_IMAGE=python:3.11-slim

# Everything runs in a venv at /opt/venv, so any base with python3 >= 3.11 and its venv module works:
# python:3.11-slim (the default) or a plain Debian bookworm with python3-venv (as `make docker-test`
# builds here, docker/test.sh). pip takes docker/certs/ca-bundle.crt as its CA bundle when present.
FROM ${BASE_IMAGE} AS deps
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
COPY docker/certs/ /tmp/certs/
COPY requirements.lock /tmp/requirements.lock
COPY pyproject.toml /tmp/pyproject.toml
# The runtime's dependencies alone (one download of torch, shared by the build and runtime stages).
# pydensecrf2 (?refine=crf) comes as source only: a C++ compiler (and Python's headers, where the base
# lacks them) for the build, removed again in the same layer.
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt; fi \
 && build_deps="g++" \
 && if ! python3 -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))"; then \
        build_deps="$build_deps python3-dev"; fi \
 && apt-get update -qq && apt-get install -y -qq --no-install-recommends $build_deps >/dev/null \
 && python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/runtime-deps.txt \
 && pip install -c /tmp/requirements.lock -r /tmp/runtime-deps.txt \
 && apt-get purge -y -qq --auto-remove $build_deps >/dev/null && rm -rf /var/lib/apt/lists/* \
 && rm -f /tmp/runtime-deps.txt /tmp/pyproject.toml

FROM deps AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md requirements.lock ./
COPY service ./service
COPY models ./models
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt; fi \
 && pip install -c requirements.lock ".[export]"
# As `make models` does, without the pretrained downloads: the image is built the same offline or not.
RUN segserve export --bundled --repository /models \
 && chmod -R a+rX /models  # the exporter writes some folders (the video split) owner-only; uid 10001 reads them

FROM deps AS wheel
WORKDIR /src
# Only the runtime: setup.py packages the folders present, so this wheel holds `segserve` alone.
COPY pyproject.toml setup.py README.md ./
COPY service ./service
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt; fi \
 && pip wheel --no-deps -w /wheels .

# The load harness (`.[loadtest]`: locust and segserve_loadtest), for compose's locust web UI on :8089.
FROM deps AS loadtest
WORKDIR /src
COPY pyproject.toml setup.py README.md requirements.lock ./
COPY service ./service
COPY loadtest ./loadtest
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt; fi \
 && pip install -c requirements.lock ".[loadtest]" \
 && groupadd --system --gid 10001 segserve && useradd --system --uid 10001 --gid 10001 --create-home segserve
USER 10001:10001
EXPOSE 8089
CMD ["locust", "-f", "/src/loadtest/locustfile.py", "--host", "http://segserve:8000"]

FROM deps AS runtime
ARG ORT_PACKAGE=""
ENV SEGSERVE_HOST=0.0.0.0 \
    SEGSERVE_PORT=8000 \
    SEGSERVE_MODEL_REPOSITORY=/models
COPY --from=wheel /wheels /tmp/wheels
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt; fi \
 && pip install --no-deps /tmp/wheels/segserve-*.whl \
 && if [ -n "$ORT_PACKAGE" ]; then pip uninstall -y onnxruntime && pip install -c /tmp/requirements.lock "$ORT_PACKAGE"; fi \
 && pip check \
 && rm -rf /tmp/wheels /tmp/requirements.lock /tmp/certs \
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
