"""Codecs: decode limits, letterbox geometry, RLE and PNG encodings, checked with pycocotools/PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from segserve.codecs.geometry import Letterbox
from segserve.codecs.image import decode_image
from segserve.codecs.masks import encode_label_png, encode_rle, semantic_segments
from segserve.contract.model_config import InputSpec, ResizeMode
from segserve.errors import TooManyPixels, UndecodableInput
from tests.conftest import exif_rotated_jpeg, make_image

SPEC = InputSpec(height=128, width=128)


def blocks(h: int, w: int, block: int, classes: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, classes, (h // block + 1, w // block + 1)).astype(np.uint8)
    return np.kron(grid, np.ones((block, block), np.uint8))[:h, :w]


def forward_nearest(labels: np.ndarray, box: Letterbox) -> np.ndarray:
    """What a perfect model would output: the original labels resized into the letterbox."""
    plane = np.zeros((box.dst_h, box.dst_w), np.uint8)
    content = Image.fromarray(labels).resize((box.content_w, box.content_h), Image.NEAREST)
    plane[: box.content_h, : box.content_w] = np.asarray(content)
    return plane


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (127, 129), (480, 640), (1000, 7), (7, 1000), (2000, 31), (513, 512)])
def test_letterbox_restores_exact_original_size(h, w):
    box = Letterbox.fit(h, w, SPEC)
    assert box.content_h <= 128 and box.content_w <= 128
    assert max(box.content_h, box.content_w) == 128  # fills the long side
    restored = box.restore(np.zeros((128, 128), np.uint8))
    assert restored.shape == (h, w)


@pytest.mark.parametrize("h,w", [(480, 640), (333, 1017), (1017, 333), (97, 89)])
def test_letterbox_round_trip_keeps_the_labels(h, w):
    box = Letterbox.fit(h, w, SPEC)
    model_pixel = max(h, w) / 128
    labels = blocks(h, w, int(16 * model_pixel))  # blocks of 16x16 model pixels
    restored = box.restore(forward_nearest(labels, box))
    assert restored.shape == labels.shape
    assert (restored == labels).mean() > 0.95  # only block borders may move, by under a model pixel


@pytest.mark.parametrize("h,w", [(480, 640), (7, 1000), (129, 127)])
def test_restore_maps_each_pixel_centre_into_its_model_pixel(h, w):
    box = Letterbox.fit(h, w, SPEC)
    rows = np.arange(128, dtype=np.int64)[:, None].repeat(128, 1)
    cols = rows.T.copy()
    got_rows, got_cols = box.restore(rows), box.restore(cols)
    centre_y = (np.arange(h)[:, None] + 0.5) * box.content_h / h
    centre_x = (np.arange(w)[None, :] + 0.5) * box.content_w / w
    assert ((got_rows <= centre_y) & (centre_y < got_rows + 1)).all()
    assert ((got_cols <= centre_x) & (centre_x < got_cols + 1)).all()


def test_letterbox_pads_bottom_right_with_the_pad_value():
    rgb = np.full((50, 100, 3), 200, np.uint8)
    box = Letterbox.fit(50, 100, SPEC)
    out = box.apply(rgb, (1, 2, 3))
    assert out.shape == (3, 128, 128)
    assert (box.content_h, box.content_w) == (64, 128)
    assert (out[:, :64] == 200).all()
    assert (out[:, 64:].reshape(3, -1) == np.array([[1], [2], [3]])).all()


def test_stretch_mode_fills_the_input():
    box = Letterbox.fit(50, 100, InputSpec(height=128, width=128, resize=ResizeMode.stretch))
    assert (box.content_h, box.content_w) == (128, 128)
    assert box.restore(np.ones((128, 128), np.uint8)).shape == (50, 100)


def test_rle_round_trip_with_pycocotools():
    masks = np.zeros((31, 17, 3), np.uint8)
    masks[3:9, 2:15, 0] = 1
    masks[:, :, 1] = 1
    masks[30, 16, 2] = 1
    for i, rle in enumerate(encode_rle(masks)):
        assert rle["size"] == [31, 17]
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert (decoded == masks[:, :, i]).all()


def test_semantic_segments_cover_the_image_once():
    labels = blocks(123, 457, 10, classes=21)
    segments = semantic_segments(labels, [f"c{i}" for i in range(21)])
    assert sum(s["area"] for s in segments) == labels.size
    union = np.zeros(labels.shape, np.int32)
    for s in segments:
        m = mask_utils.decode({"size": s["mask"]["size"], "counts": s["mask"]["counts"].encode()})
        assert (m.astype(bool) == (labels == s["class_id"])).all()
        assert s["label"] == f"c{s['class_id']}"
        union += m
    assert (union == 1).all()


def test_label_png_is_palettised_with_ids_as_pixels():
    labels = blocks(40, 60, 5, classes=21)
    image = Image.open(io.BytesIO(encode_label_png(labels)))
    assert image.mode == "P" and image.size == (60, 40)
    assert (np.asarray(image) == labels).all()


def test_decode_rejects_garbage_and_empty():
    with pytest.raises(UndecodableInput):
        decode_image(b"definitely not an image", 10**8)
    with pytest.raises(UndecodableInput):
        decode_image(b"", 10**8)
    truncated = make_image(200, 200, "PNG")[:300]
    with pytest.raises(UndecodableInput):
        decode_image(truncated, 10**8)


def test_decode_checks_pixel_count_before_decoding():
    big = make_image(600, 800, "PNG")
    with pytest.raises(TooManyPixels):
        decode_image(big, max_pixels=600 * 800 - 1)
    assert decode_image(big, max_pixels=600 * 800).rgb.shape == (600, 800, 3)


def test_jpeg_draft_decodes_smaller_but_reports_the_original_size():
    data = make_image(1200, 1600, "JPEG")
    decoded = decode_image(data, 10**8, draft_size=lambda h, w: (120, 160))
    assert (decoded.height, decoded.width) == (1200, 1600)
    assert decoded.rgb.shape[0] >= 120 and decoded.rgb.shape[1] >= 160
    assert decoded.rgb.shape[0] < 1200  # decoded at a reduced scale


def pil_decode(data: bytes, draft: tuple[int, int] | None) -> np.ndarray:
    """What decode_image gave before libjpeg-turbo decoded JPEGs straight to numpy: PIL's draft,
    convert and exif_transpose (``draft`` as (w, h) in stored order)."""
    image = Image.open(io.BytesIO(data))
    if draft is not None:
        image.draft("RGB", draft)
    return np.asarray(ImageOps.exif_transpose(image.convert("RGB")))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("scale", [None, 2, 4, 8])
def test_jpeg_pixels_are_pils_at_every_orientation_and_draft_scale(orientation, scale):
    data = exif_rotated_jpeg(101, 163, orientation, seed=orientation)
    stored = Image.open(io.BytesIO(data)).size
    draft = None if scale is None else (max(1, stored[0] // scale), max(1, stored[1] // scale))
    displayed = draft if draft is None or orientation < 5 else draft[::-1]
    decoded = decode_image(data, 10**8, None if draft is None else lambda h, w: displayed[::-1])
    np.testing.assert_array_equal(decoded.rgb, pil_decode(data, draft))
    assert decoded.rgb.flags.writeable and decoded.rgb.flags.c_contiguous


@pytest.mark.parametrize("options", [{"progressive": True}, {"subsampling": 0}, {"subsampling": 1}, {"quality": 40}])
def test_jpeg_pixels_are_pils_for_every_encoding(options):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(make_image(333, 517, "PNG", seed=3))).save(buffer, format="JPEG", **options)
    data = buffer.getvalue()
    for draft in (None, (258, 166), (100, 60)):
        got = decode_image(data, 10**8, None if draft is None else lambda h, w: draft[::-1]).rgb
        np.testing.assert_array_equal(got, pil_decode(data, draft))


def test_a_jpeg_libjpeg_turbo_warns_about_is_decoded_as_pil_decodes_it():
    data = make_image(120, 160, "JPEG")
    marker = data.index(b"\xff\xda")  # junk before the scan: libjpeg-turbo warns, PIL decodes
    junk = data[:marker] + b"\x00\x01\x02" + data[marker:]
    np.testing.assert_array_equal(decode_image(junk, 10**8).rgb, pil_decode(junk, None))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_decode_converts_any_mode_to_rgb(mode):
    buf = io.BytesIO()
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    Image.new(mode, (9, 7)).save(buf, format=fmt)
    assert decode_image(buf.getvalue(), 10**6).rgb.shape == (7, 9, 3)
