"""The per-request fast path gives the same bytes as the plain one: semantic RLEs and areas from
the model-resolution runs (checked against pycocotools on the full-size map), orjson JSON
(checked against json.dumps), the lazily made gRPC label map."""

from __future__ import annotations

import json
import math
import random
import zlib

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segserve.codecs.geometry import Letterbox
from segserve.codecs.jsonbytes import dumps
from segserve.codecs.masks import restored_segments, semantic_segments
from segserve.contract.model_config import InputSpec, ModelConfig, ResizeMode
from segserve.pipelines.base import Encoded, ImageResult, OutputFormat, Placement, Timing, render_json
from segserve.pipelines.semantic import SemanticModel


def reference_segments(full: np.ndarray, class_names: list[str]) -> list[dict]:
    """What the service answered before the fast path: one pycocotools RLE per class present
    in the full-size map, its area counted on that map."""
    result = []
    for c in np.unique(full):
        mask = np.asfortranarray((full == c).astype(np.uint8))
        rle = mask_utils.encode(mask)
        result.append({
            "class_id": int(c),
            "label": class_names[c] if c < len(class_names) else str(c),
            "area": int(mask.sum()),
            "mask": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        })
    return result


def label_plane(rng: np.random.Generator, h: int, w: int, classes: int, kind: str, dtype) -> np.ndarray:
    if kind == "noise":  # a class change at nearly every pixel
        plane = rng.integers(0, classes, (h, w))
    elif kind == "blocks":  # regions, as a model outputs
        block = int(rng.integers(1, 12))
        grid = rng.integers(0, classes, (h // block + 1, w // block + 1))
        plane = np.kron(grid, np.ones((block, block), np.int64))[:h, :w]
    elif kind == "stripes":  # runs that meet across column boundaries
        plane = np.broadcast_to((np.arange(w) // int(rng.integers(1, 5))) % classes, (h, w))
    else:  # one class everywhere
        plane = np.full((h, w), int(rng.integers(0, classes)))
    return np.ascontiguousarray(plane).astype(dtype)


GEOMETRIES = [
    # (image h, w), (model h, w), resize: downscale, upscale, odd sizes, one row/column, extreme aspects
    ((480, 640), (256, 256), ResizeMode.letterbox),
    ((480, 640), (512, 512), ResizeMode.letterbox),
    ((1080, 1920), (256, 256), ResizeMode.letterbox),
    ((37, 501), (128, 128), ResizeMode.letterbox),
    ((501, 37), (128, 128), ResizeMode.letterbox),
    ((1, 1), (16, 16), ResizeMode.letterbox),
    ((1, 999), (64, 48), ResizeMode.letterbox),
    ((999, 1), (48, 64), ResizeMode.letterbox),
    ((17, 19), (256, 256), ResizeMode.letterbox),
    ((97, 89), (128, 128), ResizeMode.stretch),
    ((300, 200), (64, 96), ResizeMode.stretch),
    ((255, 257), (256, 256), ResizeMode.letterbox),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0][0]}x{g[0][1]}-{g[1][0]}x{g[1][1]}-{g[2].value}")
@pytest.mark.parametrize("kind", ["noise", "blocks", "stripes", "one-class"])
def test_restored_segments_equal_pycocotools_on_the_full_map(geometry, kind):
    (h, w), (mh, mw), resize = geometry
    box = Letterbox.fit(h, w, InputSpec(height=mh, width=mw, resize=resize))
    rng = np.random.default_rng(zlib.crc32(repr((geometry, kind)).encode()))
    for classes, dtype in ((1, np.uint8), (2, np.uint8), (21, np.uint8), (256, np.uint8), (300, np.int32), (5, np.int64)):
        plane = label_plane(rng, mh, mw, classes, kind, dtype)
        names = [f"class{i}" for i in range(min(classes, 21))]  # ids past the names are labelled by number
        full = box.restore(plane)
        want = reference_segments(full, names)
        assert restored_segments(plane, box.restore_index(), names) == want
        assert semantic_segments(full, names) == want
        assert sum(s["area"] for s in want) == h * w


def test_restored_segments_on_many_random_geometries():
    """Random image and model sizes (odd, tiny, up- and downscaled, both resize modes) and maps."""
    rng = np.random.default_rng(12)
    for trial in range(400):
        mh, mw = (int(v) for v in rng.integers(16, 70, 2))
        h, w = (int(v) for v in rng.integers(1, 260, 2))
        resize = ResizeMode.stretch if trial % 4 == 0 else ResizeMode.letterbox
        box = Letterbox.fit(h, w, InputSpec(height=mh, width=mw, resize=resize))
        classes = int(rng.choice([1, 2, 3, 7, 256]))
        plane = label_plane(rng, mh, mw, classes, ("noise", "blocks", "stripes", "one")[trial % 4], np.uint8)
        names = [f"c{i}" for i in range(classes)]
        assert restored_segments(plane, box.restore_index(), names) == reference_segments(box.restore(plane), names), (h, w, box)


def test_restored_segments_reject_negative_class_ids():
    box = Letterbox.fit(10, 10, InputSpec(height=16, width=16))
    with pytest.raises(ValueError):
        restored_segments(np.full((16, 16), -1, np.int32), box.restore_index(), ["a"])


def test_restore_index_is_the_restore_and_read_only():
    box = Letterbox.fit(333, 1017, InputSpec(height=128, width=128))
    index = box.restore_index()
    assert index is box.restore_index()  # once per geometry
    plane = np.arange(128 * 128, dtype=np.int64).reshape(128, 128)
    assert (plane[index.rows][:, index.cols] == box.restore(plane)).all()
    assert (index.row_ids[np.searchsorted(index.row_starts, np.arange(333), side="right") - 1] == index.rows).all()
    assert (index.col_ids[index.col_of] == index.cols).all()
    with pytest.raises(ValueError):
        index.rows[0] = 1


# -- JSON -----------------------------------------------------------------------------------
def plain(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.randrange(-(2**70), 2**70) if rng.random() < 0.1 else rng.randrange(-1000, 10**9)
    if kind == 1:  # floats over every magnitude, the edge cases included
        return rng.choice([0.0, -0.0, 1e-4, 5e-5, 1e16, 1e-7, math.nan, math.inf, -math.inf,
                           rng.uniform(-1, 1) * 10 ** rng.uniform(-12, 20)])
    if kind == 2:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 32), 127, 0xE9, 0x2028, 0x1F600])) for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice(["e-", "1e-5", "0.00001", "null", "nullable", "fire-engine", "counts", "0\\o"])
    if kind == 4:
        return rng.choice([None, True, False])
    if kind == 5:
        return "".join(chr(rng.randrange(48, 112)) for _ in range(rng.randrange(40)))  # RLE counts' alphabet
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    keys = [rng.choice(["a", "class_id", "é", "score", "box", 3]) for _ in range(rng.randrange(4))]
    return {k: random_value(rng, depth + 1) for k in keys}


def test_dumps_writes_json_dumps_bytes():
    rng = random.Random(7)
    for _ in range(5000):
        obj = random_value(rng)
        assert dumps(obj) == plain(obj), obj


def test_dumps_without_floats_on_float_free_documents():
    rng = random.Random(8)
    names = ["background", "person", "fire-engine", "café", "1e-5", "null", "\x7f"]
    for _ in range(500):
        obj = {"model": rng.choice(names), "classes": rng.sample(names, 3),
               "segments": [{"class_id": rng.randrange(300), "label": rng.choice(names), "area": rng.randrange(10**7),
                             "mask": {"size": [480, 640], "counts": "".join(chr(rng.randrange(48, 112)) for _ in range(rng.randrange(200)))}}
                            for _ in range(rng.randrange(4))]}
        assert dumps(obj, floats=False) == plain(obj)


def test_dumps_raises_what_json_dumps_raises():
    with pytest.raises(TypeError):
        dumps({"x": np.int64(3)})
    with pytest.raises(TypeError):
        dumps(object())


def semantic_pipeline(classes: list[str], size: int = 64) -> SemanticModel:
    pipeline = SemanticModel.__new__(SemanticModel)
    pipeline.config = ModelConfig(name="m", classes=classes, input=InputSpec(height=size, width=size))
    return pipeline


@pytest.mark.parametrize("classes", [["background", "person"], ["fond", "café", "人"], [f"c{i}" for i in range(30)]])
def test_render_json_is_the_json_dumps_document(classes):
    pipeline = semantic_pipeline(classes)
    box = Letterbox.fit(97, 131, pipeline.config.input)
    plane = label_plane(np.random.default_rng(3), 64, 64, len(classes), "blocks", np.uint8)
    encoded = pipeline.encode(plane, Placement(97, 131, box), None, OutputFormat.json)
    result = ImageResult(131, 97, Timing(0.0012, 0.0345, 4), encoded)
    body = {"model": "m", "task": "semantic", "width": 131, "height": 97, "classes": classes, **encoded.body}
    expected = plain(body)[:-1] + b',"timing_ms":{"queue":       1.200,"compute":      34.500,"total":     123.457}}'
    assert render_json(pipeline, result, 0.1234567) == expected
    assert json.loads(expected)["segments"] == reference_segments(box.restore(plane), classes)


def test_label_map_is_made_on_demand_once():
    pipeline = semantic_pipeline(["a", "b", "c"])
    box = Letterbox.fit(50, 70, pipeline.config.input)
    plane = label_plane(np.random.default_rng(4), 64, 64, 3, "blocks", np.uint8)
    encoded = pipeline.encode(plane, Placement(50, 70, box), None, OutputFormat.json)
    assert "label_map" not in encoded.__dict__  # not made unless asked for
    assert (encoded.label_map == box.restore(plane)).all() and encoded.label_map is encoded.label_map
    png = pipeline.encode(plane, Placement(50, 70, box), None, OutputFormat.png)
    assert png.png and (png.label_map == box.restore(plane)).all()
    assert Encoded({"instances": []}).label_map is None


def test_the_overhead_benchmarks_floor_runs_the_served_hooks():
    """`make bench-overhead`'s codec floor drives the semantic pipeline's own decode/encode: it
    must keep working as the pipeline grows (its pixel budget, its options)."""
    from segserve_loadtest.bench_overhead import floor_steps, photo

    reference, served = floor_steps(photo().body)
    for _ in range(3):  # the pixel reservation is released each time
        body = json.loads(served())
    assert {s["class_id"] for s in body["segments"]} <= {0, 1} and body["segments"]
    assert len(json.loads(reference())["segments"]) == 2  # the floor's two RLEs


def test_the_codec_floor_encodes_any_semantic_models_answer_as_the_server_does():
    """`make bench`'s ceiling times the codec floor on the served model's own labels: the
    reference (pycocotools on the full-size masks) and the served path encode the same masks."""
    from segserve_loadtest.bench_overhead import codec_floor, photo

    config = ModelConfig(name="six", task="semantic", classes=[f"c{i}" for i in range(6)],
                         input=InputSpec(height=256, width=256), output={"name": "labels", "kind": "labels"})
    labels = np.zeros((256, 256), np.uint8)
    labels[20:100, 30:200], labels[150:250, 10:60] = 3, 5  # the second reaches into the padding
    reference, served = codec_floor(photo().body, config, lambda tensor: labels)
    expected = json.loads(reference())["segments"]
    answer = json.loads(served())
    assert (answer["width"], answer["height"]) == (640, 480)
    assert [s["class_id"] for s in answer["segments"]] == [0, 3, 5]
    assert [s["mask"] for s in answer["segments"]] == expected


def test_the_bench_ceiling_is_the_cores_over_engine_plus_codec_cpu():
    from segserve_loadtest.bench_service import ceiling

    # an engine that keeps 2 cores busy at 200 images/s spends 10 ms of CPU per image:
    # with 2.5 ms of codecs per request no server passes 2 / 12.5 ms = 160 req/s, 0.8 of it
    assert ceiling(2, 200.0, 10.0, 2.5) == pytest.approx(0.8)
    assert ceiling(2, 200.0, 10.0, 0.0) == pytest.approx(1.0)
    # an engine that leaves a core idle (1 of 2 busy) leaves room for the codecs beside it
    assert ceiling(2, 100.0, 10.0, 2.5) == pytest.approx(1.6)
