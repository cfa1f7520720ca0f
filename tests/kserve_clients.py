"""What the tritonclient tests of both KServe v2 transports share (tests/test_grpc.py,
tests/test_kserve_http.py): the /segment answer to compare with, and a call's error status."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pycocotools import mask as mask_utils
from tritonclient.utils import InferenceServerException

from tests.conftest import SEMANTIC


def without_timing(body: bytes) -> bytes:
    """The answer up to its timing fields, which differ between any two requests."""
    head, _, _ = body.partition(b',"timing_ms":')
    return head


def post_segment(url: str, data: bytes, content_type: str = "image/jpeg", **params) -> httpx.Response:
    """``/segment`` on the server at ``url`` (the default test model unless ``model=``): a 200."""
    params.setdefault("model", SEMANTIC)
    r = httpx.post(f"{url}/segment", content=data, params=params, headers={"Content-Type": content_type}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def status_of(call) -> str:
    """The status tritonclient reports for ``call()``, which must fail."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status()


def batch_totals(url: str) -> tuple[float, float]:
    """(batches run, requests in them) for the semantic model, from /metrics."""
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        for s in f.samples
        if s.labels.get("model") == SEMANTIC and s.name.startswith("segserve_batch_size_")
    }
    return samples["segserve_batch_size_count"], samples["segserve_batch_size_sum"]


def assert_masks_cover_the_image(body: dict, h: int, w: int) -> None:
    """A semantic answer's RLEs: each at the image size with its area, together every pixel once."""
    covered = np.zeros((h, w), np.int32)
    for segment in body["segments"]:
        mask = mask_utils.decode({"size": segment["mask"]["size"], "counts": segment["mask"]["counts"].encode()})
        assert mask.shape == (h, w) and mask.sum() == segment["area"]
        covered += mask
    assert (covered == 1).all()
