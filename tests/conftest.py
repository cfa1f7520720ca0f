from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segserve.contract.model_config import load_config
from segserve_loadtest.server import SegserveProcess
from segserve_models.export import export_model
from segserve_models.weights import WeightsSpec

SEMANTIC = "lraspp_mobilenet_v3_large"
SMALL_INPUT = (128, 128)


@pytest.fixture(scope="session")
def semantic_repo(tmp_path_factory) -> Path:
    """A model repository with one real exported LRASPP (random weights, 128x128 input)."""
    repo = tmp_path_factory.mktemp("repo")
    export_model(SEMANTIC, repo, WeightsSpec("random", seed=0), input_size=SMALL_INPUT, progress=False)
    return repo


def copy_model(src_repo: Path, dst_repo: Path, name: str = SEMANTIC, **config_updates) -> Path:
    """Copy a model into another repository, changing fields of its config.yaml."""
    dst = dst_repo / name
    shutil.copytree(src_repo / SEMANTIC, dst)
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


@pytest.fixture(scope="session")
def server(semantic_repo, tmp_path_factory):
    with SegserveProcess(semantic_repo, log_path=tmp_path_factory.mktemp("logs") / "server.log") as s:
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
