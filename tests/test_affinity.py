"""Stream affinity across replicas, without Docker: the kept balancer configuration
(deploy/haproxy/haproxy.cfg, the one compose and Kubernetes run) in front of two real
`segserve serve` processes on loopback ports.

Every chunk of one video stream must reach the replica that holds the stream's keyframe state
(chunk 1 continues chunk 0: no new stream, its first frame not a keyframe), streams must spread
over both replicas, and a chunk sent straight to the other replica must say that its state was
lost (`stream_restarted: true`, a fresh keyframe).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from segserve_models.video_split import export_video_split
from tests.conftest import copy_model
from tests.servers import ServerProcess, free_port
from tests.test_video import encode, frames, keyframes, metric

HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)
CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy" / "haproxy.cfg"
MODEL = "lraspp_video"
STREAMS = [f"cam-{i}" for i in range(8)]
INTERVAL = 100  # keyframes only where the stream (re)starts

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; `make setup` does as root)")


@pytest.fixture(scope="module")
def replicas(semantic_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("affinity_repo")
    copy_model(semantic_repo, repo, MODEL)
    export_video_split(repo, MODEL)
    logs = tmp_path_factory.mktemp("affinity_logs")
    servers = [ServerProcess(repo, logs / f"replica{i}.log", args=["--models", MODEL], env={"SEGSERVE_WARMUP": "0"})
               for i in (1, 2)]
    errors: list[BaseException] = []

    def start(server):
        try:
            server.start()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]  # two start-ups at once
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def balancer(replicas, tmp_path_factory):
    port, stats_port = free_port(), free_port()
    env = {**os.environ, "SEGSERVE_LB_BIND": f"127.0.0.1:{port}", "SEGSERVE_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
           **{f"SEGSERVE_BACKEND_{i}": s.url.removeprefix("http://") for i, s in enumerate(replicas, 1)}}
    check = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log_path = tmp_path_factory.mktemp("haproxy") / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(CONFIG)], env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        deadline = time.monotonic() + 30
        while True:  # listening, and both replicas' health checks passed
            assert process.poll() is None, log_path.read_text()
            try:
                stats = httpx.get(f"http://127.0.0.1:{stats_port}/metrics", timeout=2).text
                if stats.count('haproxy_server_status{proxy="segserve_streams",server="r1",state="UP"} 1') + \
                        stats.count('haproxy_server_status{proxy="segserve_streams",server="r2",state="UP"} 1') == 2:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"balancer not ready:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def post_chunk(client, stream: str, sequence: int, data: bytes, header: bool) -> httpx.Response:
    return client.post("/segment/video", content=data, timeout=60, headers={"Content-Type": "video/mp4",
                       **({"X-Stream-ID": stream} if header else {})},
                       params={"model": MODEL, "stream_id": stream, "sequence": sequence, "keyframe_interval": INTERVAL})


def test_streams_stick_to_one_replica_and_spread(replicas, balancer):
    clip = frames(6)
    first, second = encode(clip[:3]), encode(clip[3:])
    served_by = {}
    for i, stream in enumerate(STREAMS):
        header = i % 2 == 0  # half route on the X-Stream-ID header, half on the stream_id parameter alone
        r0 = post_chunk(balancer, stream, 0, first, header)
        assert keyframes(r0) == [True, False, False] and r0.json()["new_stream"]
        r1 = post_chunk(balancer, stream, 1, second, header)
        body = r1.json()
        assert keyframes(r1) == [False, False, False], f"{stream}: chunk 1 did not reuse chunk 0's keyframe"
        assert not body["new_stream"] and not body["stream_restarted"] and body["sequence"] == 1
        assert r0.headers["X-Segserve-Replica"] == r1.headers["X-Segserve-Replica"]
        served_by[stream] = r1.headers["X-Segserve-Replica"]
    counts = [metric(s, "segserve_video_streams") for s in replicas]
    assert sum(counts) == len(STREAMS) and all(c > 0 for c in counts), f"streams per replica: {counts} ({served_by})"
    assert sorted(set(served_by.values())) == ["r1", "r2"]

    # The same stream's chunk 2 sent straight to the replica that does not hold it: flagged, a fresh keyframe.
    stream = STREAMS[0]
    other = replicas[0] if served_by[stream] == "r2" else replicas[1]
    restarts = metric(other, "segserve_video_stream_restarts_total")
    r = other.client.post("/segment/video", content=second, headers={"Content-Type": "video/mp4"}, timeout=60,
                          params={"model": MODEL, "stream_id": stream, "sequence": 2, "keyframe_interval": INTERVAL})
    assert r.json()["new_stream"] and r.json()["stream_restarted"] and keyframes(r) == [True, False, False]
    assert metric(other, "segserve_video_stream_restarts_total") == restarts + 1


def test_requests_without_a_stream_go_least_connections(replicas, balancer):
    seen = set()
    for _ in range(6):
        r = balancer.get("/healthz")
        assert r.status_code == 200
        seen.add(r.headers["X-Segserve-Replica"])
    assert seen == {"r1", "r2"}  # sequential requests: leastconn ties go round the servers
