"""The device data path's tensor functions (segserve.codecs.tensor_image) against the PIL/numpy path
they replace, on CPU tensors: decode, letterbox and restore give the same pixels, and the RLE made
from the run starts is byte for byte pycocotools' (``semantic_segments``) with the same areas."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from segserve.codecs.geometry import Letterbox
from segserve.codecs.image import decode_image
from segserve.codecs.masks import restored_segments, segments_from_runs, semantic_segments
from segserve.codecs.tensor_image import decode_jpegs, letterbox, resize_float, restore, run_starts
from segserve.contract.model_config import InputSpec, ResizeMode
from segserve_models.synthetic.scenes import make_scene
from tests.conftest import exif_rotated_jpeg, make_image

NAMES = [f"class{i}" for i in range(300)]
PAD = (124, 116, 104)
SPECS = [InputSpec(height=64, width=64), InputSpec(height=48, width=80), InputSpec(height=64, width=32, resize=ResizeMode.stretch)]
EXAMPLES = settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def device_segments(labels: np.ndarray, names: list[str] = NAMES) -> list[dict]:
    """The device path's RLE for a full-size label map: run starts in torch, RLE strings after."""
    starts, values = run_starts(torch.from_numpy(labels))
    return segments_from_runs(starts.numpy(), values.numpy(), *labels.shape, names)


@st.composite
def label_maps(draw, max_side: int = 40) -> np.ndarray:
    """Label maps from noise to a few large regions: blocks of random size with few or many classes."""
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    classes = draw(st.sampled_from([1, 2, 3, 7, 256]))
    block = draw(st.integers(1, max(h, w)))
    grid = draw(arrays(np.uint8, (h // block + 1, w // block + 1), elements=st.integers(0, classes - 1)))
    return np.ascontiguousarray(np.kron(grid, np.ones((block, block), np.uint8))[:h, :w])


@EXAMPLES
@given(label_maps())
def test_rle_from_device_runs_is_pycocotools_byte_for_byte(labels):
    assert device_segments(labels) == semantic_segments(labels, NAMES)


@pytest.mark.parametrize("labels", [
    np.zeros((1, 1), np.uint8),  # one pixel
    np.full((1, 1), 4, np.uint8),
    np.full((37, 23), 3, np.uint8),  # one class everywhere (not class 0)
    np.arange(30, dtype=np.uint8).reshape(5, 6),  # every pixel its own run
    np.array([[0, 1, 0, 1]], np.uint8).T,  # one column
    np.array([[2, 2, 5, 5, 2]], np.uint8),  # one row: the runs go down the columns
    np.tile(np.array([[1], [2]], np.uint8), (3, 4)),  # a run ends exactly at each column's end
], ids=["1px-bg", "1px-class", "one-class", "all-runs", "column", "row", "column-ends"])
def test_rle_edge_cases(labels):
    expected = semantic_segments(labels, NAMES)  # a class absent from the map has no segment
    assert device_segments(labels) == expected
    assert sum(s["area"] for s in expected) == labels.size


@pytest.mark.parametrize("seed", range(12))
def test_rle_of_real_label_maps(seed):
    labels = make_scene(seed).labels  # the synthetic shapes' ground truth, as large as photos
    assert device_segments(labels) == semantic_segments(labels, NAMES)


@EXAMPLES
@given(st.integers(1, 300), st.integers(1, 300), st.sampled_from(SPECS), st.integers(0, 2**32 - 1))
def test_restore_and_its_runs_match_the_numpy_path(h, w, spec, seed):
    box = Letterbox.fit(h, w, spec)
    rng = np.random.default_rng(seed)
    block = int(rng.integers(1, 9))
    plane = np.kron(rng.integers(0, 5, (spec.height // block + 1, spec.width // block + 1)).astype(np.uint8),
                    np.ones((block, block), np.uint8))[: spec.height, : spec.width].copy()
    full = restore(torch.from_numpy(plane), box)
    assert np.array_equal(full.numpy(), box.restore(plane))
    starts, values = run_starts(full)
    got = segments_from_runs(starts.numpy(), values.numpy(), h, w, NAMES)
    assert got == restored_segments(plane, box.restore_index(), NAMES)  # what the CPU path answers


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 200), st.integers(1, 200), st.sampled_from(SPECS), st.integers(0, 2**32 - 1))
def test_letterbox_matches_the_cpu_path(h, w, spec, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    box = Letterbox.fit(h, w, spec)
    expected = box.apply(rgb, PAD)
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # as decode_jpeg gives it
    assert np.array_equal(letterbox(chw, box, PAD).numpy(), expected)
    # CUDA's resize (float32, rounded): within one level of the CPU's uint8 kernel
    if (h, w) != (box.content_h, box.content_w):
        floated = resize_float(chw, box.content_h, box.content_w).numpy().astype(int)
        assert np.abs(floated - expected[:, : box.content_h, : box.content_w]).max() <= 1


def jpeg(rgb: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    make_image(120, 200, seed=1),
    make_image(1, 1, seed=2),
    jpeg(make_scene(4).image, quality=95, subsampling=0),
    jpeg(make_scene(5).labels * 40),  # grayscale
    *(exif_rotated_jpeg(40, 70, o, seed=3) for o in (3, 6, 8)),  # EXIF orientations: as displayed
], ids=["gradient", "1px", "scene-444", "gray", "exif3", "exif6", "exif8"])
def test_jpeg_decode_matches_pil(data):
    decoded = decode_jpegs([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device("cpu"))[0]
    expected = decode_image(data, 10**8).rgb  # no draft: full size
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), expected)
