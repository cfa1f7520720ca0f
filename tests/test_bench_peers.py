"""`make bench-peers`' harness without any peer installed: the agreement check (pycocotools RLEs
decoded to label maps, semantic and instance answers), the medians and ratios, the open-loop rows,
the report and plot, the KServe binary-data body, and the hand-written FastAPI peer script itself,
run with this project's own interpreter (it has fastapi, uvicorn, onnxruntime, Pillow, pycocotools
and segserve's codecs) on bench_overhead's trivial model, checked against segserve's own codecs on
the same images -- plain (PIL) and as its "+codecs" variant, which must answer exactly as segserve
does, on the trivial model and on the bundled Mask R-CNN's split path -- and driven by the project's
open loop. No virtualenv is created: the other peers' scripts (LitServe, PyTriton, Ray Serve,
BentoML, and their "+codecs" variants) are served and checked the same way only where
`make bench-peers` has already built their virtualenvs (and segserve's codec folder) under
.cache/peers, and skipped otherwise."""

from __future__ import annotations

import json
import os
import time
import struct
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segserve_loadtest import bench_peers
from segserve_loadtest.bench_overhead import build_trivial_model
from segserve_loadtest.bench_peers import (
    CODECS,
    PeerProcess,
    installed_python,
    Target,
    agreement,
    kserve_binary_request,
    kserve_binary_result,
    label_map,
    markdown,
    measure_rate,
    open_loop_rate,
    model_json,
    multipart,
    photo,
    plot,
    summarise,
)


def answer(labels: np.ndarray) -> dict:
    """A segserve-shaped answer for a label map."""
    segments = []
    for c in np.unique(labels):
        rle = mask_utils.encode(np.asfortranarray(labels == c, dtype=np.uint8))
        segments.append({"class_id": int(c), "mask": {"size": list(labels.shape), "counts": rle["counts"].decode()}})
    return {"height": labels.shape[0], "width": labels.shape[1], "segments": segments}


def test_agreement_decodes_rles_and_counts_equal_pixels():
    a = np.zeros((40, 60), np.uint8)
    a[10:20, 5:30] = 2
    b = a.copy()
    b[0, :30] = 1  # 30 of 2400 pixels differ
    assert np.array_equal(label_map(answer(a)), a)
    assert agreement(answer(a), answer(a)) == 1.0
    assert agreement(answer(a), answer(b)) == pytest.approx(1 - 30 / 2400)
    assert agreement(answer(a), answer(a[:, :50])) == 0.0  # other size: nothing agrees


def test_instance_answers_paint_the_best_instance_on_top():
    mask_a = np.zeros((20, 30), np.uint8)
    mask_a[2:10, 2:20] = 1
    mask_b = np.zeros((20, 30), np.uint8)
    mask_b[5:15, 10:25] = 1

    def rle(mask):
        encoded = mask_utils.encode(np.asfortranarray(mask))
        return {"size": [20, 30], "counts": encoded["counts"].decode()}

    answer_ = {"height": 20, "width": 30, "instances": [{"class_id": 2, "score": 0.9, "mask": rle(mask_a)},
                                                         {"class_id": 5, "score": 0.6, "mask": rle(mask_b)}]}
    labels = label_map(answer_)
    assert labels[6, 15] == 2 and labels[12, 20] == 5 and labels[0, 0] == 0  # overlap: the better score wins
    assert agreement(answer_, {**answer_, "instances": answer_["instances"][:1]}) == pytest.approx(1 - (mask_b & ~mask_a).sum() / 600)


def cell(rps: float, p99: float = 100.0, cpu: float = 10.0, failed: int = 0) -> dict:
    return {"requests_per_s": rps, "p50_ms": p99 / 2, "p95_ms": p99 * 0.9, "p99_ms": p99, "failed": failed, "non_2xx": 0,
            "server_cpu_ms_per_request": cpu}


def fake_rounds() -> list[dict]:
    return [
        {"raw_engine": {"images_per_s": 100.0, "batch_size": 1, "instances": 2},
         "systems": {"segserve": {"1": cell(40), "32": cell(80)}, "naive": {"1": cell(50), "32": cell(60, failed=1)}}},
        {"raw_engine": {"images_per_s": 50.0, "batch_size": 1, "instances": 2},
         "systems": {"segserve": {"1": cell(20), "32": cell(40)}, "naive": {"1": cell(30), "32": {"concurrency": 32, "error": "ab died"}}}},
    ]


def test_open_loop_rate_is_a_share_of_segserves_best_level_and_summarised():
    assert open_loop_rate({"1": cell(40), "8": cell(90), "32": {"error": "ab died"}}, 0.8) == pytest.approx(72)
    assert open_loop_rate({"1": {"error": "x"}}, 0.8) is None
    rounds = fake_rounds()
    rounds[0]["open_loop"] = {"naive": {**cell(30), "rate_rps": 32.0, "requests": 100, "failed": 2}}
    rounds[1]["open_loop"] = {"naive": {**cell(20, p99=300), "rate_rps": 16.0, "requests": 50, "failed": 0}}
    row = summarise(rounds, ["segserve", "naive"], [1, 32])["open_loop"]["naive"]
    assert row["rate_rps"] == 24.0 and row["requests_per_s"] == 25.0 and row["p99_ms"] == 200.0
    assert (row["failed"], row["requests"]) == (2, 150)


def test_codec_variants_share_their_peers_script_and_virtualenv():
    specs = bench_peers.peers(2)
    for name in ("naive", "litserve", "pytriton", "ray", "bentoml"):
        plain, variant = specs[name], specs[name + CODECS]
        assert variant.codecs and not plain.codecs
        assert (variant.script, variant.venv, variant.requirements) == (plain.script, plain.venv, plain.requirements)
    assert "--own-json" in specs["naive+codecs"].args and "--own-json" not in specs["naive"].args


def test_peers_batch_as_segserves_config_says(tmp_path):
    repository = tmp_path / "repository"
    build_trivial_model(repository)
    config = repository / "trivial" / "config.yaml"
    config.write_text(config.read_text() + "dynamic_batching:\n  preferred_batch_size: 2\n  max_queue_delay_ms: 1.5\n")
    batching = bench_peers.Batching.of(repository, "trivial")
    assert (batching.size, batching.window_s) == (2, 0.0015)
    specs = bench_peers.peers(2, batching)
    for name, flags in {"litserve": ["--max-batch-size", "2", "--batch-timeout", "0.0015"],
                        "pytriton": ["--max-batch-size", "2", "--max-queue-delay-us", "1500"],
                        "ray": ["--max-batch-size", "2", "--batch-wait-timeout", "0.0015"],
                        "bentoml": ["--max-batch-size", "2"]}.items():
        args = specs[name].args
        for flag, value in zip(flags[::2], flags[1::2]):
            assert args[args.index(flag) + 1] == value, (name, flag)
        assert "max_batch_size=2" in specs[name].settings and specs[name + CODECS].args[:len(args)] == args
    # no window: LitServe's is its 1 ms poll step (with 0 it spins on its queue)
    litserve = bench_peers.peers(2, bench_peers.Batching(2, 0.0))["litserve"].args
    assert litserve[litserve.index("--batch-timeout") + 1] == "0.001"


def test_summary_takes_medians_and_per_round_ratios():
    summary = summarise(fake_rounds(), ["segserve", "naive"], [1, 32])
    assert summary["raw_engine_images_per_s"] == 75.0 and summary["open_loop"] == {}
    seg1, naive1, naive32 = summary["table"]["segserve"][1], summary["table"]["naive"][1], summary["table"]["naive"][32]
    assert seg1["requests_per_s"] == 30.0 and seg1["vs_segserve"] == 1.0
    assert seg1["vs_raw_engine"] == pytest.approx(0.4)  # 40/100 and 20/50
    assert naive1["vs_segserve"] == pytest.approx((50 / 40 + 30 / 20) / 2)
    # a round whose ab failed is left out of the medians and counted
    assert naive32["requests_per_s"] == 60.0 and naive32["errors"] == 1 and naive32["failed"] == 1
    assert naive32["vs_segserve"] == pytest.approx(60 / 80) and naive32["vs_raw_engine"] == pytest.approx(0.6)


def test_report_and_plot(tmp_path):
    rounds = fake_rounds()
    rounds[0]["open_loop"] = {"naive": {**cell(30), "rate_rps": 32.0, "requests": 100, "failed": 2}}
    model = {"model": "m", "description": "d", "systems": ["segserve", "naive"], "titles": {"segserve": "segserve", "naive": "naive"},
             "levels": [1, 32], "agreement": {"naive": {"equal_pixels": 0.9987}}, "rounds": rounds,
             "summary": summarise(rounds, ["segserve", "naive"], [1, 32])}
    result = {"command": "make bench-peers", "machine": "x86_64, 2 CPUs", "load_before": "1 1 1", "load_after": "2 2 2", "rounds": 2,
              "requests": 300, "levels": [1, 32], "titles": model["titles"], "settings": {"segserve": "s", "naive": "n"},
              "skipped": {"pytriton": "install failed: x"}, "models": [model]}
    text = markdown(json.loads(json.dumps(result)))  # as read back from bench_peers.json (string keys)
    assert "| naive | 32 | 60.0 |" in text and "naive 99.87 % equal pixels" in text and "**pytriton**: install failed" in text
    assert "| naive | 32.0 | 30.0 | 50 | 90 | 100 | 2 / 100 | 10.0 | - | - |" in text  # the open-loop row
    assert "batches of up to" not in text
    model["peer_batching"] = {"size": 2, "window_ms": 0.0}
    assert "batches of up to 2 with a 0 ms window" in markdown(json.loads(json.dumps(result)))
    plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_kserve_binary_body_and_answer():
    body, headers = kserve_binary_request(b"JPEGDATA")
    length = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:length])
    assert header["inputs"][0]["datatype"] == "BYTES" and header["inputs"][0]["parameters"]["binary_data_size"] == 12
    assert body[length:] == struct.pack("<I", 8) + b"JPEGDATA"
    out = json.dumps({"segments": []}).encode()
    assert kserve_binary_result(b'{"h":1}' + struct.pack("<I", len(out)) + out, 7) == {"segments": []}
    form = multipart(photo(64, 48, 0))
    assert form.content_type.startswith("multipart/form-data; boundary=") and b'name="image"' in form.body
    listed, _ = Target("bentoml", "http://x", "multipart-list", 0, "").load(photo(64, 48, 0))
    assert b'name="images"' in listed.body  # a batchable BentoML API's one list argument


def segserve_label_map(repository: Path, data: bytes) -> np.ndarray:
    """The trivial model's label map through segserve's own codecs (decode, letterbox, restore)."""
    from segserve.codecs.geometry import Letterbox
    from segserve.codecs.image import decode_image
    from segserve.contract.model_config import load_config

    spec = load_config(repository / "trivial").input
    image = decode_image(data, 40_000_000, lambda h, w: Letterbox.fit(h, w, spec).min_decode_size())
    box = Letterbox.fit(image.height, image.width, spec)
    return box.restore((box.apply(image.rgb, spec.pad_value)[0] > 127).astype(np.uint8))


def serves_the_trivial_model_like_segserve(peer: bench_peers.Peer, python: Path, tmp_path: Path, codec_path: str = "") -> None:
    """``peer``'s script answers two images of the trivial model with segserve's label maps (within the
    resize differences; exactly, for a "+codecs" variant), its process tree's CPU is counted, the
    project's open loop drives it, and stop() leaves none of that tree running."""
    repository = tmp_path / "repository"
    build_trivial_model(repository)
    spec = model_json(repository, "trivial", tmp_path / "trivial.json", "segserve" if peer.codecs else "pil")
    process = PeerProcess(peer, python, spec, tmp_path / f"{peer.name}.log", ready_timeout_s=180, codec_path=codec_path).start()
    try:
        target = Target(peer.name, process.url, peer.protocol, process.pid, peer.settings)
        with httpx.Client(timeout=60) as client:
            for image in (photo(640, 480, 0), photo(500, 375, 2)):
                result = target.segment(client, image)
                assert (result["width"], result["height"]) == (int(image.name.split("_")[1].split("x")[0]), int(image.name.split("x")[1][:-4]))
                assert {s["label"] for s in result["segments"]} <= {"dark", "bright"}
                equal = (label_map(result) == segserve_label_map(repository, image.body)).mean()
                # plain: PIL's resize of the full decode vs segserve's draft decode + torch resize; +codecs: segserve's own
                assert equal == 1.0 if peer.codecs else equal >= 0.98, equal
        opened = measure_rate(target, photo(), 20.0, 1.0)
        assert opened["requests"] == 20 and opened["failed"] == 0 and opened["p99_ms"] > 0 and opened["client_cpu_ms_per_request"] > 0, opened
        tree = bench_peers.process_tree(process.pid)
        assert bench_peers.tree_cpu_s(process.pid) > 0
    finally:
        process.stop()
    assert process.process.poll() is not None
    assert not [pid for pid in tree if bench_peers.alive(pid)], process.log_tail()


def test_naive_peer_serves_the_trivial_model_like_segserve(tmp_path):
    serves_the_trivial_model_like_segserve(bench_peers.peers(2)["naive"], Path(sys.executable), tmp_path)


def test_naive_codecs_variant_answers_exactly_as_segserve(tmp_path):
    """This interpreter imports segserve already: the variant needs no codec folder here."""
    serves_the_trivial_model_like_segserve(bench_peers.peers(2)["naive" + CODECS], Path(sys.executable), tmp_path)


def test_naive_codecs_variant_serves_the_bundled_mask_rcnn_as_segserve(instance_repo, tmp_path):
    """segserve's split path in the peer (backbone.onnx, the torch heads, the box paste): the same instances as
    segserve's own answer on the same images, painted into the same label maps."""
    from tests.conftest import INSTANCE_SPLIT
    from tests.servers import InProcessServer

    peer = bench_peers.peers(2)["naive" + CODECS]
    spec = model_json(instance_repo, INSTANCE_SPLIT, tmp_path / "instance.json", "segserve")
    process = PeerProcess(peer, Path(sys.executable), spec, tmp_path / "peer.log", ready_timeout_s=180).start()
    try:
        target = Target(peer.name, process.url, peer.protocol, process.pid, peer.settings)
        with InProcessServer(instance_repo, models=[INSTANCE_SPLIT]) as server, httpx.Client(timeout=60) as client:
            for image in (photo(640, 480, 0), photo(256, 320, 3)):
                ours = server.client.post(f"/segment?model={INSTANCE_SPLIT}", content=image.body,
                                          headers={"Content-Type": image.content_type}).raise_for_status().json()
                theirs = target.segment(client, image)
                assert theirs["instances"], "the bundled Mask R-CNN finds the synthetic scene's shapes"
                assert [(i["class_id"], i["label"]) for i in theirs["instances"]] == [(i["class_id"], i["label"]) for i in ours["instances"]]
                assert [i["score"] for i in theirs["instances"]] == pytest.approx([i["score"] for i in ours["instances"]], abs=1e-4)
                assert agreement(ours, theirs) >= 0.999
    finally:
        process.stop()


CACHE = Path(__file__).resolve().parents[1] / ".cache" / "peers"


# naive+codecs too: in its own virtualenv it finds segserve only through the codec folder
@pytest.mark.parametrize("name", ["litserve", "pytriton", "ray", "bentoml", *(p + CODECS for p in ("naive", "litserve", "pytriton", "ray", "bentoml"))])
def test_installed_peer_serves_the_trivial_model_like_segserve(name, tmp_path):
    peer = bench_peers.peers(2)[name]
    python = installed_python(CACHE, peer)
    if python is None:  # the suite never downloads a peer (Ray alone is hundreds of MB)
        pytest.skip(f"no virtualenv for {name} under {CACHE}: `make bench-peers BENCH_PEERS_ARGS=--systems {name}` builds it")
    codec_path = ""
    if peer.codecs:
        codec_path = bench_peers.installed_codec_path(CACHE)
        if codec_path is None:
            pytest.skip(f"no segserve codec folder under {CACHE}: `make bench-peers BENCH_PEERS_ARGS=--systems {name}` builds it")
    serves_the_trivial_model_like_segserve(peer, python, tmp_path, codec_path)


def test_paused_holds_every_other_system_stopped(monkeypatch):
    """Only the system being measured runs: the others' whole process trees are stopped (state T), and all run
    again afterwards."""
    import subprocess

    monkeypatch.setattr(bench_peers.Paused, "SETTLE_S", 0.0)
    spawn = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    systems = {name: subprocess.Popen([sys.executable, "-c", spawn]) for name in ("a", "b")}
    try:
        deadline = time.monotonic() + 10
        while any(len(bench_peers.process_tree(p.pid)) < 2 for p in systems.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        trees = {name: bench_peers.process_tree(p.pid) for name, p in systems.items()}
        assert all(len(tree) == 2 for tree in trees.values())  # the script and its child

        def states(name: str) -> set[str]:
            return {bench_peers.state(pid) for pid in trees[name]}

        with bench_peers.Paused({name: p.pid for name, p in systems.items()}) as paused:
            assert states("a") == states("b") == {"T"}
            with paused.run("a"):
                assert "T" not in states("a") and states("b") == {"T"}
            assert states("a") == {"T"}
        assert "T" not in states("a") | states("b")
    finally:
        for p in systems.values():
            for pid in bench_peers.process_tree(p.pid):
                os.kill(pid, 9)
            p.wait()
