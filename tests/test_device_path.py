"""The device data path (SEGSERVE_DATA_PATH=device) through the real server, on torch CPU tensors:
the bundled shapes_lraspp on the torch backend answers every image with the same JSON segments
and PNGs as the default CPU path, says which path serves it, and a corrupt JPEG in a batch fails
its own request only."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from segserve.config import Settings
from segserve.contract.model_config import load_config
from segserve.engine.torch import TorchEngine
from segserve.pipelines.semantic_device import choose_device
from tests.conftest import BUNDLED_MODEL as MODEL
from tests.conftest import exif_rotated_jpeg, make_image
from tests.servers import InProcessServer


@pytest.fixture(scope="module")
def servers(bundled_repo):
    with InProcessServer(bundled_repo, backend="torch", data_path="cpu") as cpu, \
            InProcessServer(bundled_repo, backend="torch", data_path="device") as device:
        yield cpu, device


def gray_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(make_image(120, 100, seed=6))).convert("L").save(buffer, format="JPEG")
    return buffer.getvalue()


# Sizes below twice the model's content size: the CPU path reads no JPEG draft for them (the device
# path decodes every JPEG at full size, docs/architecture.md), so both resize the same pixels.
IMAGES = {
    "jpeg": (make_image(150, 200, seed=1), "image/jpeg"),
    "jpeg-tall": (make_image(250, 40, seed=2), "image/jpeg"),
    "jpeg-1px": (make_image(1, 1, seed=3), "image/jpeg"),
    "jpeg-exif6": (exif_rotated_jpeg(90, 160, 6, seed=4), "image/jpeg"),
    "jpeg-gray": (gray_jpeg(), "image/jpeg"),
    "png": (make_image(97, 131, "PNG", seed=5), "image/png"),
    "webp": (make_image(64, 64, "WEBP", seed=7), "image/webp"),
}


def test_the_models_list_says_which_path_serves(servers):
    cpu, device = servers
    assert cpu.client.get("/v1/models").json()["models"][0]["data_path"] == "cpu"
    assert device.client.get("/v1/models").json()["models"][0]["data_path"] == "device:cpu"


@pytest.mark.parametrize("name", IMAGES)
def test_device_path_answers_as_the_cpu_path(servers, name):
    data, content_type = IMAGES[name]
    answers = []
    for server in servers:
        response = server.client.post(f"/segment?model={MODEL}", content=data, headers={"content-type": content_type})
        assert response.status_code == 200, response.text
        body = response.json()
        body.pop("timing_ms")
        answers.append(body)
    assert answers[0]["segments"], "the bundled model finds something in every test image"
    assert answers[1] == answers[0]


@pytest.mark.parametrize("name", ["jpeg", "png"])
def test_png_label_maps_agree(servers, name):
    data, content_type = IMAGES[name]
    bodies = [s.client.post(f"/segment?model={MODEL}&format=png", content=data, headers={"content-type": content_type})
              for s in servers]
    assert [b.status_code for b in bodies] == [200, 200]
    assert bodies[1].content == bodies[0].content


def test_a_corrupt_jpeg_fails_alone_in_its_batch(servers):
    cpu, device = servers
    good, _ = IMAGES["jpeg"]
    corrupt = good[: len(good) // 2]  # the header is whole: it is refused by the decoder, in the batch

    async def burst(client):
        posts = [client.post(f"/segment?model={MODEL}", content=body, headers={"content-type": "image/jpeg"})
                 for body in [good, corrupt] * 4]
        return await asyncio.gather(*posts)

    responses = device.run(burst)
    assert [r.status_code for r in responses] == [200, 422] * 4  # the CPU path's answer to it too:
    assert cpu.client.post(f"/segment?model={MODEL}", content=corrupt, headers={"content-type": "image/jpeg"}).status_code == 422
    error = responses[1].json()["error"]
    assert error["code"] == "undecodable_input" and "truncated" in error["message"], error
    assert len({r.content.split(b'"timing_ms"')[0] for r in responses[::2]}) == 1


def test_auto_picks_the_device_path_only_for_torch_on_cuda(bundled_repo):
    config = load_config(bundled_repo / MODEL)
    engine = TorchEngine(config, bundled_repo / MODEL / "1" / "weights.pt")  # CPU here
    assert choose_device("auto", config, engine)[0] is None
    assert choose_device("cpu", config, engine)[0] is None
    assert str(choose_device("device", config, engine)[0]) == "cpu"
    scored = config.model_copy(update={"output": config.output.model_copy(update={"probabilities": "probabilities"})})
    assert choose_device("device", scored, engine)[0] is None  # refine=crf stays on the CPU path
    assert Settings(data_path="device").data_path == "device"
