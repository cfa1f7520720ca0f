# segserve: `make serve` and `make test` each do their own set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-12)
REPO ?= model_repository
HOST ?= 0.0.0.0
PORT ?= 8000
# pip's local mirrors print one "is ignored" line per package; hide that noise only.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup models serve lint test test-workers docker-test train train-video train-keypoints bench bench-crf bench-video-deeplabv3 bench-video-http bench-overhead gpu-check loadtest soak drain overload lock proto clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "segserve needs Python 3.11+"'
	@command -v ab >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq apache2-utils >/dev/null; } \
		|| echo "warning: ab (apache2-utils) is not installed; the ab load tests will be skipped"
	@command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; } \
		|| echo "warning: haproxy is not installed; the stream affinity test (tests/test_affinity.py) will be skipped"
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
		|| echo "warning: chromium is not installed; the demo page's browser test (tests/test_demo_page.py) will be skipped"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.lock 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP)
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# The default repository, exported once and reused after: the bundled models trained here
# (offline), plus torchvision's COCO/VOC LRASPP, Mask R-CNN and Keypoint R-CNN whenever their weights can be had.
models: setup
	$(BIN)/segserve export --bundled --repository $(REPO) --skip-existing
	$(BIN)/segserve export --model lraspp_mobilenet_v3_large --weights pretrained --video-split --repository $(REPO) --skip-existing \
		|| echo "note: pretrained LRASPP weights unavailable (offline?): serving the bundled models"
	$(BIN)/segserve export --model maskrcnn_resnet50_fpn --weights pretrained --repository $(REPO) --skip-existing \
		|| echo "note: pretrained Mask R-CNN weights unavailable (offline?): serving the bundled models"
	$(BIN)/segserve export --model keypointrcnn_resnet50_fpn --weights pretrained --repository $(REPO) --skip-existing \
		|| echo "note: pretrained Keypoint R-CNN weights unavailable (offline?): serving the bundled models"

serve: models
	$(BIN)/segserve serve --host $(HOST) --port $(PORT) --model-repository $(REPO)

# The one-way layering (.importlinter: build side -> runtime -> graphs -> contract); also checked
# inside the suite (tests/test_layering.py), here first so that a broken contract fails fast.
lint: setup
	$(BIN)/lint-imports --no-logo

# The whole suite in one process, then the HTTP API's own tests (tests/test_api.py) again against
# `segserve serve --workers 2` (see test-workers: all the API tests that way take too long for every run).
test: lint
	$(BIN)/python -m pytest
	SEGSERVE_TEST_WORKERS=2 $(BIN)/python -m pytest tests/test_api.py

# The API tests (every test that speaks to a server through HTTP, KServe v2 or gRPC) once more, against
# `segserve serve --workers 2`: real processes on a real socket in place of the in-process app
# (tests/servers.py, SEGSERVE_TEST_WORKERS); the few tests marked single_process are skipped, with their reason.
API_TESTS := tests/test_api.py tests/test_kserve_http.py tests/test_grpc.py tests/test_errors.py tests/test_hostile.py \
	tests/test_video.py tests/test_video_deeplabv3.py tests/test_access.py tests/test_openapi.py tests/test_instance_service.py \
	tests/test_keypoint_service.py tests/test_client.py tests/test_refine.py tests/test_fuzz.py tests/test_segment_cli.py \
	tests/test_soak.py tests/test_demo_page.py
test-workers: lint
	SEGSERVE_TEST_WORKERS=2 $(BIN)/python -m pytest $(API_TESTS)

# The images for real (not part of `make test`: builds are slow): CPU images built, `docker compose --profile
# scale up -d`, /segment, gRPC, ab, locust's UI, a video stream through HAProxy with 2 replicas, Prometheus'
# targets UP, torn down. First run as root installs docker.io, debootstrap and the compose plugin
# (docker/test.sh; docs/deployment.md). DOCKER_BASE_IMAGE=python:3.11-slim where Docker Hub is reachable.
docker-test: setup
	docker/test.sh

# Keyframe feature reuse end to end: held-out synthetic clips as mp4 chunks POSTed to /segment/video on the bundled
# LRASPP, per-frame vs the model's adaptive policy: frames/s, server CPU per frame, mIoU (docs/benchmarks.md).
#   make bench-video-http [VIDEO_HTTP_ARGS="--streams 4 --intervals 4,8"]
bench-video-http: models
	$(BIN)/python -m segserve_loadtest.bench_video_http --repository $(REPO) --model shapes_lraspp $(VIDEO_HTTP_ARGS)

# Retrain the bundled models from scratch (fixed seed and steps, ~29 min on 2 quiet CPU cores):
# rewrites models/checkpoints/*.pth + SHA256SUMS byte for byte; `git diff` shows nothing when reproduced.
# Delete model_repository/shapes_* afterwards to re-export them.
train: setup
	$(BIN)/python -m segserve_models.train all

# Retrain the bundled keypoint model (Keypoint R-CNN, MobileNetV3-FPN, on the synthetic polygons' corners and
# tips; its backbone starts from the committed shapes_lraspp.pth) from scratch, fixed seed and steps:
# rewrites models/checkpoints/shapes_keypointrcnn.pth + SHA256SUMS byte for byte (docs/accuracy.md).
train-keypoints: setup
	$(BIN)/python -m segserve_models.train keypoints

# Retrain the bundled LRASPP's video correction (stale keyframe features, /segment/video) on
# synthetic clips, reproducibly: rewrites models/checkpoints/shapes_lraspp_video.pth + SHA256SUMS.
# It is trained for the committed shapes_lraspp.pth (which `make train` reproduces byte for byte).
train-video: setup
	$(BIN)/python -m segserve_models.video_correction

# The DeepLabV3 rows of the video benchmark (docs/benchmarks.md, "Video"): DeepLabV3-MobileNetV3 with the bundled
# LRASPP's backbone (trained here) under a random ASPP head, BatchNorm calibrated on synthetic scenes (no DeepLabV3
# weights are bundled, and pretrained ones need the internet), exported at 256x256 with --video-split into
# $(VIDEO_BENCH_DIR), then per-frame vs k = 1/2/4/8 vs adaptive on the synthetic clips.
#   make bench-video-deeplabv3 [VIDEO_BENCH_ARGS="--repeats 1"]
VIDEO_BENCH_DIR ?= out/video-bench
DEEPLAB_VIDEO := deeplabv3_video
$(VIDEO_BENCH_DIR)/deeplabv3-calibrated.pth: | setup
	mkdir -p $(VIDEO_BENCH_DIR)
	$(BIN)/python -m segserve_models.calibration --model deeplabv3_mobilenet_v3_large --backbone bundled:shapes_lraspp --out $@
bench-video-deeplabv3: $(VIDEO_BENCH_DIR)/deeplabv3-calibrated.pth
	$(BIN)/segserve export --model deeplabv3_mobilenet_v3_large --name $(DEEPLAB_VIDEO) --weights $< --input-size 256x256 \
		--video-split --repository $(VIDEO_BENCH_DIR) --skip-existing
	$(BIN)/python -m segserve_models.video_bench --repository $(VIDEO_BENCH_DIR) --model $(DEEPLAB_VIDEO) --thresholds 1.0,1.7 \
		$(VIDEO_BENCH_ARGS)

# Raw engine vs service over HTTP (ab at concurrency 1, 8, 32); writes docs/bench/bench_service.{md,json}.
bench: models
	$(BIN)/python -m segserve_loadtest.bench_service --out docs/bench

# Dense-CRF refinement (?refine=crf) on the bundled LRASPP's 64 held-out scenes: mIoU, boundary F-score and
# trimap mIoU with and without, CRF ms per image (docs/accuracy.md); writes docs/bench/bench_crf.json.
#   make bench-crf [BENCH_CRF_ARGS="--tune"]   (--tune: the CrfSettings grid on the validation split)
bench-crf: setup
	$(BIN)/python -m segserve_models.evaluation.crf_bench --json docs/bench/bench_crf$(if $(findstring --tune,$(BENCH_CRF_ARGS)),_tune).json $(BENCH_CRF_ARGS)

# Serving overhead: a generated trivial ONNX model under ab -n 3000 -c 32 -k -l against the codec floor
# measured in the same run (docs/benchmarks.md); writes docs/bench/bench_overhead.{md,json}.
#   make bench-overhead [BENCH_OVERHEAD_ARGS="--rounds 5 --profile"]   (--profile needs py-spy)
bench-overhead: setup
	$(BIN)/python -m segserve_loadtest.bench_overhead --out docs/bench $(BENCH_OVERHEAD_ARGS)

# The GPU data path measured (docs/benchmarks.md, "GPU check"): shapes_lraspp on the torch backend, fp16 on CUDA,
# the device data path against the CPU one under ab; rewrites that section. Within 8 minutes. Without CUDA it
# is a dry run on CPU that checks the plumbing and writes nothing (tests/test_gpu_check.py runs it). It exports
# shapes_lraspp into $(REPO) itself when absent (not the rest of `make models`: their exports would eat its minutes).
gpu-check: setup
	$(BIN)/python -m segserve_loadtest.gpu_check --repository $(REPO) $(GPU_CHECK_ARGS)

# segserve against the servers a user would pick instead (naive FastAPI, LitServe, PyTriton, Ray Serve, BentoML), each serving the same
# exported ONNX file with the same work per request, each in its own virtualenv under .cache/peers/ (created here, never
# a project dependency), and each also as NAME+codecs, sharing segserve's codec code (.cache/peers/segserve-codecs);
# the bundled shapes_lraspp and shapes_maskrcnn (exported as `make models` does) and bench_overhead's trivial model;
# interleaved rounds under /tmp/segserve-bench.lock: ab at each level, then the open loop at a fixed rate.
# Writes docs/bench/bench_peers.{md,json,png} (docs/benchmarks.md).
#   make bench-peers [BENCH_PEERS_ARGS="--systems naive,naive+codecs --rounds 3 --requests 300"]
.PHONY: bench-peers
bench-peers: setup
	$(BIN)/python -m segserve_loadtest.bench_peers --repository $(REPO) --out docs/bench $(BENCH_PEERS_ARGS)

# The standard sweep + report (docs: loadtest/README.md). Without URL it starts a server itself.
#   make loadtest [URL=http://127.0.0.1:8000] [MODEL=name] [OUT=dir] [LOADTEST_ARGS="--levels 1,4 --duration 5"]
loadtest: $(if $(URL),setup,models)
	$(BIN)/python -m segserve_loadtest.run $(if $(URL),--url $(URL),--model-repository $(REPO)) $(if $(MODEL),--model $(MODEL)) --out $(or $(OUT),out/loadtest) $(LOADTEST_ARGS)

# 10 minutes at 2x the measured saturation throughput (open loop) against `segserve serve` with the bundled
# default model: 0 lost requests, every 503 with Retry-After, RSS growth < 5 %, p99s; writes docs/soak.{md,json},
# exits non-zero when a check fails. Needs the machine to itself (~13 min). docs: loadtest/soak.py
#   make soak [SOAK_ARGS="--duration 60 --out out/soak"]
soak: setup
	$(BIN)/python -m segserve_loadtest.soak $(SOAK_ARGS)

# SIGTERM under load: 256 keep-alive connections back to back on /segment, SIGTERM after 5 s; every request
# sent before the server exits must get a whole answer (exit non-zero otherwise). docs: loadtest/drain.py
#   make drain [DRAIN_ARGS="--concurrency 512"]
drain: setup
	$(BIN)/python -m segserve_loadtest.drain --repository $(REPO) $(DRAIN_ARGS)

# Closed-loop overload (ab -c 256's load) on the bundled default model: the 503s' latency apart from the 200s',
# goodput against saturation, ab's own figures, and the Little's-law arithmetic. docs: loadtest/overload.py
#   make overload [OVERLOAD_ARGS="--concurrency 512 --seconds 30"]
overload: setup
	$(BIN)/python -m segserve_loadtest.overload --repository $(REPO) $(OVERLOAD_ARGS)

# Rebuild requirements.lock from pyproject.toml in a scratch venv: the full development environment,
# i.e. the runtime plus every extra (export, train, loadtest, test). --all keeps setuptools (which the
# packaging tests build with, and torch pulls in) pinned; pip itself and segserve are left out.
LOCK_EXTRAS := client,export,train,loadtest,test
lock:
	rm -rf /tmp/segserve-lock && $(PYTHON) -m venv /tmp/segserve-lock
	/tmp/segserve-lock/bin/pip install -q ".[$(LOCK_EXTRAS)]" 2>&1 | $(QUIET_PIP)
	rm -rf build segserve.egg-info  # pip builds in the tree; leave no stale build/lib behind
	{ echo "# Full pinned environment for segserve (pip freeze of a working install). Regenerate with \`make lock\`."; \
	  /tmp/segserve-lock/bin/pip freeze --all --exclude pip --exclude segserve; } > requirements.lock

# Regenerate the gRPC code from service/transport/grpc/inference.proto in a scratch venv:
# grpcio-tools 1.85 needs protobuf 7, which tritonclient refuses; 1.76 generates for protobuf 6.
GRPC_DIR := service/transport/grpc
GRPCGEN := /tmp/segserve-grpcgen
proto:
	rm -rf $(GRPCGEN) && $(PYTHON) -m venv $(GRPCGEN)
	$(GRPCGEN)/bin/pip install -q grpcio-tools==1.76.0 protobuf==6.33.6 2>&1 | $(QUIET_PIP)
	$(GRPCGEN)/bin/python -m grpc_tools.protoc -I $(GRPC_DIR) --python_out=$(GRPC_DIR) --pyi_out=$(GRPC_DIR) \
		--grpc_python_out=$(GRPC_DIR) $(GRPC_DIR)/inference.proto
	sed -i 's/^import inference_pb2 as/from . import inference_pb2 as/' $(GRPC_DIR)/inference_pb2_grpc.py

clean:
	rm -rf $(VENV) .pytest_cache
