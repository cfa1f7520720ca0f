"""The demo page at / in a real headless browser: Debian's Chromium (the Makefile's set-up installs
it when it can) driven by Playwright against the session's `segserve serve` process. Playwright's
own browser download (`playwright install`) is never used; without /usr/bin/chromium the test is
skipped with the reason."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SEMANTIC, make_image

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra (requirements.lock)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium; the Makefile does it as root)")
    with sync_api.sync_playwright() as playwright:
        # a persistent context is how a fresh --user-data-dir is given to Chromium
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_ARGS,
            headless=True, timeout=TIMEOUT_MS,
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


def test_the_page_loads_segments_an_upload_and_shows_errors_readably(page, process_server, tmp_path):
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(process_server.url + "/")
    assert page.title() == "segserve demo"
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.locator("#model").input_value() == SEMANTIC  # the server's default, from /v1/models

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_image(120, 160))
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#result:not([hidden])")
    size = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight, img.src.startsWith('blob:')]")
    assert size == [160, 120, True]  # the overlay JPEG, at the image's size
    assert page.locator("#areas tbody tr").count() >= 1
    assert "%" in page.locator("#areas tbody").inner_text()
    timings = page.locator("#timings").inner_text()
    assert "compute" in timings and "round trip" in timings
    assert page.locator("#error").is_hidden()

    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    error = page.locator("#error").inner_text()
    assert error.startswith("415 unsupported_media_type") or error.startswith("422 undecodable_input"), error
    assert problems == []


def test_a_short_video_plays_back_as_overlays(page, process_server, tmp_path):
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(process_server.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    clip = tmp_path / "clip.mp4"
    write_mp4(clip, [np.asarray(Image.open(io.BytesIO(make_image(64, 80, seed=i)))) for i in range(4)])
    page.set_input_files("#file", str(clip))
    page.wait_for_selector("#result:not([hidden])")
    assert "4 frames of 80x64" in page.locator("#caption").inner_text()
    assert page.locator("#areas tbody tr").count() == 4  # one row per frame, its time and keyframe flag
    assert "decode" in page.locator("#timings").inner_text()
    first = page.eval_on_selector("#overlay", "img => [img.naturalWidth, img.naturalHeight, img.src.slice(0, 23)]")
    assert first == [80, 64, "data:image/jpeg;base64,"]  # the server's overlay JPEG of a frame
    source = page.eval_on_selector("#overlay", "img => img.src")
    page.wait_for_function("src => document.querySelector('#overlay').src !== src", arg=source)  # it plays
    assert problems == [] and page.locator("#error").is_hidden()


def write_mp4(path: Path, images: list[np.ndarray]) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
