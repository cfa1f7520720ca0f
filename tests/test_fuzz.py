"""Hostile bytes against the decoders and the upload routes (issue 13).

Property-based (hypothesis, derandomized and bounded so every run is the same and cheap):
``decode_image`` and ``decode_video`` given arbitrary bytes, real files truncated or mutated,
and headers that claim huge sizes, only ever return a well-formed result or raise the domain
errors UndecodableInput / TooManyPixels -- never another exception, never slowly; a header
that claims more pixels than allowed is TooManyPixels before any pixel is decoded. The
multipart path is fuzzed through the app. The hostile-input corpus (tests/hostile_inputs.py)
is sent to /segment and /segment/video: every answer is the documented JSON 4xx (or a 200
for odd but valid input), none is a 5xx, nothing is logged as an error, the server stays up.

SEGSERVE_FUZZ_SCALE=N multiplies every example count (e.g. 50 for a long local run)."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segserve.codecs.image import DecodedImage, decode_image
from segserve.codecs.video import DecodedVideo, decode_video
from segserve.errors import TooManyPixels, UndecodableInput
from tests.hostile_inputs import (
    VIDEO_SEEDS,
    bmp_declaring,
    corpus,
    image_seeds,
    jpeg_declaring,
    mjpeg_video_declaring,
    multipart,
    png_declaring,
    video_seeds,
    webp_vp8_declaring,
    webp_vp8l_declaring,
    webp_vp8x_declaring,
)
from tests.servers import app_server, logged_errors

SCALE = int(os.environ.get("SEGSERVE_FUZZ_SCALE", "1"))
SLOW_S = 5.0  # a hostile input answered slower than this counts as a hang (the inputs are < 100 KB)
MAX_PIXELS = 1_000_000
ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]{6,}")  # error messages name no memory addresses


def fuzz(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- strategies ----------------------------------------------------------------------------


@st.composite
def mutated(draw, seeds: tuple[bytes, ...]) -> bytes:
    """A real file with a few bytes flipped, overwritten, inserted or deleted, maybe cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "byte", "insert", "delete", "splat"]))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "splat":  # a run of 0xFF / 0x00: large lengths and sizes in the fields it hits
            data[at:at + 4] = bytes([draw(st.sampled_from([0x00, 0xFF]))]) * 4
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


SIZE = st.one_of(st.integers(0, 64), st.integers(0, 2**16 - 1), st.sampled_from([2**14, 2**16 - 1, 2**24, 2**31 - 1, 2**32 - 1]))


@st.composite
def crafted_image(draw) -> tuple[bytes, int, int, bool]:
    """(bytes, declared width, height, strict): with strict, the decoder must see the declared
    size (PNG IHDR, JPEG SOF, VP8L, BMP); WebP VP8 and VP8X sizes pass through libwebp's checks first."""
    width, height = draw(SIZE), draw(SIZE)
    kind = draw(st.sampled_from(["png", "jpeg", "progressive", "vp8x", "vp8", "vp8l", "bmp"]))
    if kind == "png":
        width, height = min(width, 2**31 - 1), min(height, 2**31 - 1)  # PNG's limit
        bit_depth, colour = draw(st.sampled_from([(8, 2), (8, 6), (1, 0), (16, 2), (8, 3), (4, 3), (16, 4)]))
        return png_declaring(width, height, bit_depth, colour, draw(st.none() | st.binary(max_size=64))), width, height, True
    if kind in ("jpeg", "progressive"):
        width, height = width & 0xFFFF, height & 0xFFFF
        seed = image_seeds()[1] if kind == "progressive" else image_seeds()[0]
        return jpeg_declaring(width, height, seed), width, height, True
    if kind == "vp8x":
        width, height = max(1, min(width, 2**24)), max(1, min(height, 2**24))
        return webp_vp8x_declaring(width, height), width, height, False
    if kind == "vp8":
        width, height = width & 0x3FFF, height & 0x3FFF
        return webp_vp8_declaring(width, height), width, height, False
    if kind == "vp8l":
        width, height = max(1, min(width, 2**14)), max(1, min(height, 2**14))
        return webp_vp8l_declaring(width, height), width, height, True
    width, height = min(width, 2**31 - 1), min(height, 2**31 - 1)
    return bmp_declaring(width, height), width, height, True


# -- decode_image ----------------------------------------------------------------------------


def decode_image_safely(data: bytes, max_pixels: int = MAX_PIXELS, draft: bool = False) -> DecodedImage | Exception:
    """decode_image's result or its domain error, checked: nothing else, nothing slow, a well-formed image."""
    draft_size = (lambda h, w: (max(1, h // 4), max(1, w // 4))) if draft else None
    started = time.monotonic()
    try:
        result = decode_image(data, max_pixels, draft_size)
    except (UndecodableInput, TooManyPixels) as exc:
        assert exc.message and not ADDRESS.search(exc.message), exc.message
        result = exc
    assert time.monotonic() - started < SLOW_S, f"decode_image took {time.monotonic() - started:.1f} s"
    if isinstance(result, DecodedImage):
        rgb = result.rgb
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.writeable
        assert 1 <= result.width * result.height <= max_pixels
        if draft:
            assert 1 <= rgb.shape[0] <= result.height and 1 <= rgb.shape[1] <= result.width
        else:
            assert rgb.shape[:2] == (result.height, result.width)
    return result


@fuzz(150)
@given(st.binary(max_size=2048), st.booleans())
def test_decode_image_of_arbitrary_bytes(data, draft):
    decode_image_safely(data, draft=draft)


@fuzz(300)
@given(mutated(image_seeds()), st.booleans())
def test_decode_image_of_mutated_real_images(data, draft):
    decode_image_safely(data, draft=draft)


@fuzz(200)
@given(crafted_image(), st.integers(1, 4 * MAX_PIXELS), st.booleans())
def test_a_header_that_claims_too_many_pixels_is_refused_before_decoding(crafted, max_pixels, draft):
    data, width, height, strict = crafted
    result = decode_image_safely(data, max_pixels, draft)
    if strict and width * height > max_pixels:
        assert isinstance(result, TooManyPixels), f"{width}x{height} > {max_pixels}: {result!r}"


def test_the_image_seeds_decode():
    for data in image_seeds():
        assert isinstance(decode_image_safely(data), DecodedImage)


# -- decode_video ----------------------------------------------------------------------------


def decode_video_safely(data: bytes, max_frames: int = 8, frame_stride: int = 1, max_pixels: int = MAX_PIXELS):
    out = (24, 20)
    started = time.monotonic()
    try:
        result = decode_video(data, max_frames=max_frames, frame_stride=frame_stride, max_pixels=max_pixels,
                              scale_to=lambda h, w: out)
    except (UndecodableInput, TooManyPixels) as exc:
        assert exc.message and not ADDRESS.search(exc.message) and "<none>" not in exc.message, exc.message
        result = exc
    assert time.monotonic() - started < SLOW_S, f"decode_video took {time.monotonic() - started:.1f} s"
    if isinstance(result, DecodedVideo):
        assert 1 <= len(result.frames) <= max_frames
        assert 1 <= result.width * result.height <= max_pixels
        indices = [frame.index for frame in result.frames]
        assert indices == sorted(set(indices)) and all(i % frame_stride == 0 for i in indices)
        for frame in result.frames:
            assert frame.rgb.shape == (*out, 3) and frame.rgb.dtype == np.uint8
    return result


@fuzz(80)
@given(st.binary(max_size=2048))
def test_decode_video_of_arbitrary_bytes(data):
    decode_video_safely(data)


@fuzz(200)
@given(mutated(video_seeds()), st.integers(1, 8), st.integers(1, 3), st.sampled_from([MAX_PIXELS, 255, 16 * 16]))
def test_decode_video_of_mutated_real_chunks(data, max_frames, frame_stride, max_pixels):
    decode_video_safely(data, max_frames, frame_stride, max_pixels)


@fuzz(40)
@given(SIZE, SIZE)
def test_decode_video_of_frames_that_claim_huge_sizes(width, height):
    result = decode_video_safely(mjpeg_video_declaring(width & 0xFFFF, height & 0xFFFF))
    if isinstance(result, DecodedVideo):
        assert (result.width, result.height) == (width & 0xFFFF, height & 0xFFFF)


def test_the_video_seeds_decode():
    assert len(video_seeds()) >= 2, "PyAV lacks the encoders for the video seeds"
    for data, (codec, *_) in zip(video_seeds(), VIDEO_SEEDS):
        result = decode_video_safely(data)
        assert isinstance(result, DecodedVideo) and len(result.frames) == 4, codec
        assert isinstance(decode_video_safely(data, max_frames=3), UndecodableInput)  # TooManyFrames


# -- through the app -------------------------------------------------------------------------

LIMITS = {"max_body_bytes": 1 << 20, "max_image_pixels": 4_000_000, "video_max_frames": 8}
DOCUMENTED = {"/segment": {200, 400, 404, 413, 415, 422, 503, 504}, "/segment/video": {200, 400, 404, 409, 413, 415, 422, 503, 504}}


@pytest.fixture(scope="module")
def hostile_server(semantic_repo):
    with app_server(semantic_repo, warmup=False, **LIMITS) as server:
        yield server


def assert_documented(route: str, response, what: str) -> None:
    assert response.status_code in DOCUMENTED[route] and response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code != 200:
        error = response.json()["error"]
        assert response.headers["content-type"] == "application/json" and error["code"] and error["message"], what
        assert response.status_code != 503 or response.headers.get("retry-after"), what


@pytest.mark.parametrize("case", corpus(LIMITS), ids=lambda case: case.name)
def test_the_hostile_corpus_gets_documented_answers(hostile_server, case):
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    started = time.monotonic()
    response = hostile_server.client.post(case.route, content=case.body, params=case.params, headers=headers)
    assert time.monotonic() - started < SLOW_S
    assert_documented(case.route, response, case.name)
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in expected, f"{case.name}: {response.status_code} {response.text[:300]}"
    if case.code is not None:
        assert response.json()["error"]["code"] == case.code, response.text


def test_after_the_corpus_the_server_is_up_and_logged_no_error(hostile_server):
    assert hostile_server.client.get("/healthz").status_code == 200
    assert hostile_server.client.get("/readyz").status_code == 200
    assert not logged_errors(hostile_server.log())
    assert 'status="500"' not in hostile_server.client.get("/metrics").text


BOUNDARY = st.text(st.sampled_from("abcXYZ0123456789'()+_,-./:=?"), min_size=1, max_size=70)
FIELD = st.sampled_from(["image", "frame", "file", "", 'im"age', "image\r\nX-Evil: 1"])


@st.composite
def multipart_request(draw) -> tuple[str, str, bytes]:
    """(route, content type, body): a multipart body with file and plain parts, maybe corrupted,
    under a Content-Type whose boundary may not be the body's."""
    route = draw(st.sampled_from(["/segment", "/segment/video"]))
    parts = draw(st.lists(st.tuples(FIELD, st.none() | st.sampled_from(["a.jpg", "", "../../x", "\x00.png"]),
                                    st.none() | st.sampled_from(["image/jpeg", "image/png", "text/plain", "multipart/mixed"]),
                                    st.one_of(st.sampled_from(image_seeds()), mutated(image_seeds()), st.binary(max_size=64))),
                          max_size=6))
    boundary = draw(BOUNDARY)
    body = multipart(parts, boundary)
    if draw(st.booleans()):
        body = draw(mutated((body,)))
    declared = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}", f'multipart/form-data; boundary="{boundary}"',
                                     "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=x",
                                     f"multipart/form-data; charset=utf-8; boundary={boundary}"]))
    return route, declared, body


@fuzz(60)
@given(multipart_request())
def test_fuzzed_multipart_uploads_get_documented_answers(hostile_server, upload):
    route, content_type, body = upload
    response = hostile_server.client.post(route, content=body, headers={"Content-Type": content_type})
    assert_documented(route, response, f"{route} {content_type!r} {body[:80]!r}")


@fuzz(60)
@given(st.sampled_from(["/segment", "/segment/video"]), st.sampled_from(["image/jpeg", "image/png", "image/webp", "video/mp4",
                                                                        "video/webm", "video/x-matroska"]),
       st.one_of(mutated(image_seeds()), mutated(video_seeds()), st.binary(max_size=512)))
def test_fuzzed_raw_uploads_get_documented_answers(hostile_server, route, content_type, body):
    response = hostile_server.client.post(route, content=body, headers={"Content-Type": content_type})
    assert_documented(route, response, f"{route} {content_type} {body[:80]!r}")


def test_a_chunk_whose_metadata_is_not_utf8_decodes():
    """Found by the fuzzer: an MP4 whose encoder tag was not UTF-8 was a 422 ('utf-8' codec can't decode)."""
    for data in video_seeds()[:2]:  # the MP4 seeds
        latin1 = data.replace(b"Lavf", "Lävf".encode("latin-1"), 1)  # same length: the boxes stay valid
        assert latin1 != data
        assert isinstance(decode_video_safely(latin1), DecodedVideo)
