from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segserve.contract.artifacts import CONFIG_FILE, WHOLE_GRAPH_ARTIFACT
from segserve.contract.model_config import load_config
from segserve_models.export import export_model
from segserve_models.weights import WeightsSpec
from tests.servers import WORKERS, ServerProcess, app_server

SEMANTIC = "lraspp_mobilenet_v3_large"
SMALL_INPUT = (128, 128)
INSTANCE_ARCH = "maskrcnn_mobilenet_v3_large_fpn"
# The bundled Mask R-CNN, exported once: served on the split path and on its whole graph.
INSTANCE_SPLIT, INSTANCE_WHOLE = "shapes", "shapes_whole"
# The bundled Keypoint R-CNN, exported once.
KEYPOINT_ARCH, KEYPOINT_MODEL = "keypointrcnn_mobilenet_v3_large_fpn", "shapes_keypointrcnn"


@pytest.fixture(scope="session")
def semantic_repo(tmp_path_factory) -> Path:
    """A model repository with one real exported LRASPP (random weights, 128x128 input), with
    batches of up to max_batch_size: the exporter's preferred_batch_size auto measures this
    machine's best at load, which may be 1, and the tests that count batches need them to form
    (tests/test_batch_profile.py serves auto)."""
    repo = tmp_path_factory.mktemp("repo")
    export_model(SEMANTIC, repo, WeightsSpec("random", seed=0), input_size=SMALL_INPUT, progress=False)
    config = load_config(repo / SEMANTIC)
    assert config.measures_batch_size  # what the exporter writes
    batching = config.dynamic_batching.model_copy(update={"preferred_batch_size": None})
    config.model_copy(update={"dynamic_batching": batching}).dump(repo / SEMANTIC / "config.yaml")
    return repo


def copy_model(src_repo: Path, dst_repo: Path, name: str = SEMANTIC, source: str = SEMANTIC, **config_updates) -> Path:
    """Copy model ``source`` into another repository as ``name``, changing fields of its config.yaml."""
    dst = dst_repo / name
    shutil.copytree(src_repo / source, dst)
    config = load_config(dst).model_copy(update={"name": name})
    data = config.model_dump(mode="json")
    for dotted, value in config_updates.items():
        node = data
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    type(config).model_validate(data).dump(dst / "config.yaml")
    return dst


# The bundled LRASPP as `make models` exports it (labels out), at a small input for speed.
BUNDLED_MODEL = "shapes_lraspp"


@pytest.fixture(scope="session")
def bundled_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("bundled_repo")
    export_model(SEMANTIC, repo, WeightsSpec.parse("bundled:shapes_lraspp"), name=BUNDLED_MODEL, input_size=SMALL_INPUT,
                 progress=False)
    return repo


# The bundled LRASPP exported with --probabilities (?refine=crf), at a small input for speed.
REFINE_MODEL = "shapes_crf"


@pytest.fixture(scope="session")
def refine_repo(tmp_path_factory) -> Path:
    """The bundled LRASPP exported with its class probabilities (``--probabilities``), 128x128."""
    repo = tmp_path_factory.mktemp("refine_repo")
    export_model(SEMANTIC, repo, WeightsSpec.parse("bundled:shapes_lraspp"), name=REFINE_MODEL, input_size=SMALL_INPUT,
                 probabilities=True, progress=False)
    return repo


@pytest.fixture(scope="session")
def instance_repo(tmp_path_factory) -> Path:
    """The bundled Mask R-CNN checkpoint exported once (with the exporter's parity check);
    a second model serves the same version folder through its whole graph."""
    from segserve_models.instance.export import export_instance_model

    repo = tmp_path_factory.mktemp("instance_repo")
    version_dir = export_instance_model(INSTANCE_ARCH, repo, WeightsSpec.parse("bundled:shapes_maskrcnn"), name=INSTANCE_SPLIT,
                                        progress=False)
    whole_dir = repo / INSTANCE_WHOLE
    shutil.copytree(version_dir, whole_dir / version_dir.name)
    config = load_config(version_dir.parent)
    config = config.model_copy(
        update={
            "name": INSTANCE_WHOLE,
            "backends": ["onnxruntime"],
            "onnxruntime": config.onnxruntime.model_copy(update={"model_file": WHOLE_GRAPH_ARTIFACT}),
            "parameters": {**config.parameters, "default_path": "whole_graph"},
        }
    )
    config.dump(whole_dir / CONFIG_FILE)
    return repo


@pytest.fixture(scope="session")
def keypoint_repo(tmp_path_factory) -> Path:
    """The bundled Keypoint R-CNN checkpoint exported once (with the exporter's parity check)."""
    from segserve_models.instance.export import export_instance_model

    repo = tmp_path_factory.mktemp("keypoint_repo")
    export_instance_model(KEYPOINT_ARCH, repo, WeightsSpec.parse("bundled:shapes_keypointrcnn"), name=KEYPOINT_MODEL, progress=False)
    return repo


def pytest_collection_modifyitems(config, items):
    """With SEGSERVE_TEST_WORKERS=N (tests/servers.py) the tests marked single_process are skipped, with their reason."""
    if WORKERS <= 1:
        return
    for item in items:
        marker = item.get_closest_marker("single_process")
        if marker is not None:
            (reason,) = marker.args  # the marker says why, always
            item.add_marker(pytest.mark.skip(reason=f"single process only: {reason}"))


@pytest.fixture(scope="session")
def server(semantic_repo):
    """The real app in this process (tests/servers.py) serving the exported LRASPP, defaults
    (with SEGSERVE_TEST_WORKERS=N: `segserve serve --workers N`)."""
    with app_server(semantic_repo) as s:
        yield s


@pytest.fixture(scope="session")
def process_server(semantic_repo, tmp_path_factory):
    """The same as a real `segserve serve` process, for the tests that need one (ab, sockets)."""
    with ServerProcess(semantic_repo, tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


def make_image(height: int, width: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A photo-like test image: smooth colour gradients plus a few shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), np.full_like(xx, 128)], -1)
    img = base.astype(np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, max(1, height // 2)), rng.integers(0, max(1, width // 2))
        img[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def exif_rotated_jpeg(height: int, width: int, orientation: int, seed: int = 0) -> bytes:
    """make_image's JPEG saved again with an EXIF orientation tag (0x0112): stored one way,
    displayed another."""
    image = Image.open(io.BytesIO(make_image(height, width, seed=seed)))
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()
