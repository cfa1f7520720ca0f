"""`segserve segment` and the client's one-liner, as a user runs them: real processes on both
ends (the session's `segserve serve` process, tests/conftest.py: process_server)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segserve.client.cli import find_jobs
from tests.conftest import make_image
from tests.test_client import write_mp4


def segment_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segserve", "segment", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_the_readme_one_liner_prints_the_image_shape(process_server, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(make_image(123, 77))
    code = ("from segserve.client import Client; r = Client('%s').segment('photo.jpg'); print(r.label_map.shape)"
            % process_server.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(123, 77)"


def test_a_folder_gives_label_maps_overlays_and_json_and_a_second_run_resumes(process_server, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    (photos / "more").mkdir(parents=True)
    sizes = {"a": (60, 80), "b": (90, 50), "more/c": (64, 64)}
    for name, (h, w) in sizes.items():
        (photos / f"{name}.jpg").write_bytes(make_image(h, w, seed=len(name)))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    write_mp4(photos / "clip.mp4", 5)

    first = segment_cli(photos, "--out", out, "--url", process_server.url, "--concurrency", 2, "--chunk-frames", 2)
    assert first.returncode == 1, first.stderr  # one input failed
    assert "images/s" in first.stderr and "0 skipped" in first.stderr
    assert "broken.jpg: 422 undecodable_input" in first.stderr
    assert "images: 100%" in first.stderr  # the progress bar
    for name, (h, w) in sizes.items():
        labels = np.asarray(Image.open(out / f"{name}.png"))
        served = process_server.client.post("/segment", content=(photos / f"{name}.jpg").read_bytes(),
                                             params={"format": "png"}, headers={"Content-Type": "image/jpeg"})
        np.testing.assert_array_equal(labels, np.asarray(Image.open(io.BytesIO(served.content))))
        assert Image.open(out / f"{name}.overlay.jpg").size == (w, h)
        assert json.loads((out / f"{name}.json").read_text())["height"] == h
    for i in range(5):  # the video, frame by frame
        assert Image.open(out / "clip" / f"{i:06d}.overlay.jpg").size == (128, 96)
    clip = json.loads((out / "clip.json").read_text())
    assert [f["index"] for f in clip["frames"]] == list(range(5)) and clip["stream"]["chunks"] == 3
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"a", "b", "more/c", "clip"} and list(results["failures"]) == [str(photos / "broken.jpg")]
    assert results["summary"]["segmented"] == 3 + 5

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = segment_cli(photos, "--out", out, "--url", process_server.url, "--no-progress")
    assert again.returncode == 1 and "4 skipped" in again.stderr and "segmented 0 image(s)" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps  # nothing done twice
    assert set(json.loads((out / "results.json").read_text())["results"]) == {"a", "b", "more/c", "clip"}


def test_a_glob_and_an_unreachable_server(process_server, tmp_path):
    for name in ("x", "y"):
        (tmp_path / f"{name}.jpg").write_bytes(make_image(32, 48))
    (tmp_path / "z.png").write_bytes(make_image(32, 48, "PNG"))
    done = segment_cli(str(tmp_path / "*.jpg"), "--out", tmp_path / "out", "--url", process_server.url, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.overlay.jpg")) == ["x.overlay.jpg", "y.overlay.jpg"]
    nobody = segment_cli(tmp_path / "z.png", "--out", tmp_path / "out2", "--url", "http://127.0.0.1:9", "--no-progress",
                         "--retries", 1)
    assert nobody.returncode == 1 and "connection_error" in nobody.stderr and "after 2 tries" in nobody.stderr
    with pytest.raises(SystemExit, match="nothing-here: no such file"):
        find_jobs([str(tmp_path / "nothing-here")])
