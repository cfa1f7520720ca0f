"""Export pipeline and backend parity: torch eager vs ONNX Runtime, engine-level and over HTTP
(the real app in this process, tests/servers.py).

Real process: none here; serving an export needs the app, not the process.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from segserve.engine import create_engine
from segserve.repository import scan
from segserve_models.export import ExportError, ParityReport, export_model, sample_images
from segserve_models.weights import WeightsError, WeightsSpec, download, verify_sha256
from tests.conftest import SEMANTIC, make_image
from tests.servers import InProcessServer


def test_export_writes_a_versioned_repository_entry(semantic_repo):
    entry = scan(semantic_repo)[0]
    assert entry.config.name == SEMANTIC and entry.version == 1 and entry.error is None
    assert entry.config.weights.source == "random"
    files = {p.name for p in entry.version_dir.iterdir()}
    assert {"model.onnx", "weights.pt", "export.json"} <= files
    provenance = json.loads((entry.version_dir / "export.json").read_text())
    assert provenance["parity"]["label_agreement"] >= 0.999
    graph = onnx.load(str(entry.version_dir / "model.onnx")).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 128]  # dynamic batch; fixed letterbox geometry
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not any("aux" in init.name for init in graph.initializer)  # aux head dropped


def test_torch_and_onnxruntime_engines_agree(semantic_repo):
    entry = scan(semantic_repo)[0]
    images = sample_images(3, 128, 128, seed=7).numpy()  # batch 3: not the export example's batch
    outputs = {b: create_engine(entry.config, entry.version_dir, b).infer({"images": images})["labels"] for b in ("onnxruntime", "torch")}
    assert outputs["onnxruntime"].shape == (3, 128, 128) and outputs["onnxruntime"].dtype == np.uint8
    assert (outputs["onnxruntime"] == outputs["torch"]).mean() >= 0.999


def test_same_masks_over_http_from_both_backends(semantic_repo, server):
    data = make_image(240, 320, seed=5)
    onnx_body = server.client.post("/segment", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60).json()
    with InProcessServer(semantic_repo, backend="torch") as torch_server:
        info = torch_server.client.get("/v1/models").json()["models"][0]
        assert (info["backend"], info["device"]) == ("torch", "cpu")
        torch_body = torch_server.client.post("/segment", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60).json()
    areas = lambda body: {s["class_id"]: s["area"] for s in body["segments"]}  # noqa: E731
    a, b = areas(onnx_body), areas(torch_body)
    differing = sum(abs(a.get(k, 0) - b.get(k, 0)) for k in a.keys() | b.keys()) / 2
    assert differing / (240 * 320) <= 0.001


def test_new_export_is_a_new_version_and_dynamic_hw_works(tmp_path):
    for expected in (1, 2):
        v = export_model(SEMANTIC, tmp_path, WeightsSpec("random", seed=expected), input_size=(64, 64), dynamic_hw=True, progress=False)
        assert v.name == str(expected)
    entry = scan(tmp_path)[0]
    assert entry.version == 2
    engine = create_engine(entry.config, entry.version_dir, "onnxruntime")
    assert engine.infer({"images": sample_images(2, 96, 160).numpy()})["labels"].shape == (2, 96, 160)


def test_parity_check_fails_loudly():
    with pytest.raises(ExportError, match="parity check failed"):
        ParityReport(max_abs_diff=0.5, max_abs_logit=10.0, label_agreement=0.9, batch=2, height=8, width=8).check()


def test_local_checkpoint_file_round_trips(tmp_path, semantic_repo):
    entry = scan(semantic_repo)[0]
    state = {k.removeprefix("net."): v for k, v in torch.load(entry.version_dir / "weights.pt").items() if k.startswith("net.")}
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"model": state, "classes": entry.config.classes}, ckpt)
    v = export_model(SEMANTIC, tmp_path / "repo", WeightsSpec.parse(str(ckpt)), input_size=(128, 128), progress=False)
    assert scan(tmp_path / "repo")[0].config.weights.source == "file"
    a = torch.load(entry.version_dir / "weights.pt")
    b = torch.load(v / "weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrained_offline_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGSERVE_CACHE_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="offline|cannot download"):
        download("http://127.0.0.1:9/lraspp-d234d4ea.pth", progress=False, timeout=2)


def test_cached_weights_are_sha256_verified(tmp_path):
    f = tmp_path / "w-00000000.pth"
    f.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="sha256"):
        verify_sha256(f, "00000000")
    with pytest.raises(WeightsError, match="sha256"):
        download("http://127.0.0.1:9/w-00000000.pth", dest_dir=tmp_path, progress=False)


class TinyUNet(nn.Module):
    """A foreign model: float32 normalised input, logits output, not built by segserve."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.head = nn.Conv2d(8 + 3, classes, 1)

    def forward(self, x):
        return self.head(torch.cat([self.up(self.down(x)), x], 1))


def test_any_onnx_model_dropped_into_the_repository_is_served(tmp_path):
    model_dir = tmp_path / "unet" / "1"
    model_dir.mkdir(parents=True)
    torch.onnx.export(
        TinyUNet().eval(), (torch.randn(1, 3, 64, 64),), str(model_dir / "model.onnx"),
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
    )
    (tmp_path / "unet" / "config.yaml").write_text(
        "name: unet\nclasses: [background, road, car]\nbackends: [onnxruntime]\n"
        "input: {name: input, height: 64, width: 64, dtype: float32}\noutput: {name: logits, kind: logits}\n"
    )
    with InProcessServer(tmp_path) as s:
        r = s.client.post("/segment?model=unet", content=make_image(50, 70), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["classes"] == ["background", "road", "car"]
    assert sum(seg["area"] for seg in body["segments"]) == 50 * 70


def test_bundled_weights_are_checked_against_sha256sums(tmp_path, monkeypatch):
    import segserve_models.weights as weights

    v = export_model(SEMANTIC, tmp_path / "repo", WeightsSpec.parse("bundled:shapes_lraspp"), input_size=(64, 64), progress=False)
    config = scan(tmp_path / "repo")[0].config
    assert config.weights.source == "bundled" and "sha256" in config.weights.detail
    assert config.classes[0] == "background" and len(config.classes) == 6
    assert (v / "model.onnx").is_file()

    fake = tmp_path / "checkpoints"
    fake.mkdir()
    (fake / "shapes_lraspp.pth").write_bytes(b"not the committed file")
    (fake / "SHA256SUMS").write_text((weights.BUNDLED_DIR / "SHA256SUMS").read_text())
    monkeypatch.setattr(weights, "BUNDLED_DIR", fake)
    with pytest.raises(WeightsError, match="sha256"):
        export_model(SEMANTIC, tmp_path / "repo2", WeightsSpec.parse("bundled:shapes_lraspp"), input_size=(64, 64), progress=False)
    with pytest.raises(WeightsError, match="no bundled checkpoint"):
        export_model(SEMANTIC, tmp_path / "repo3", WeightsSpec.parse("bundled:nope"), input_size=(64, 64), progress=False)


def test_every_bundled_model_is_a_committed_checkpoint_with_valid_serving_settings(semantic_repo):
    import yaml

    from segserve.contract.model_config import ModelConfig, load_config
    from segserve.graphs import zoo
    from segserve_models.cli import _merged
    from segserve_models.weights import BUNDLED_DIR, BUNDLED_MANIFEST

    manifest = yaml.safe_load(BUNDLED_MANIFEST.read_text())
    committed = {line.split()[1].removesuffix(".pth") for line in (BUNDLED_DIR / "SHA256SUMS").read_text().splitlines()}
    assert set(manifest) <= committed
    exported = load_config(semantic_repo / SEMANTIC).model_dump(mode="json")
    for name, entry in manifest.items():
        zoo.get(entry["model"])
        ModelConfig.model_validate(_merged(exported, entry.get("serving", {})))


def test_export_bundled_writes_the_serving_settings_and_skip_existing_keeps_a_tuned_config(tmp_path, monkeypatch):
    """`segserve export --bundled` (make models, the Docker image) on a one-model manifest: the
    export's config.yaml gets the manifest's serving settings over the exporter's defaults; run
    again with --skip-existing, a config.yaml changed since (a `segserve tune`) stays as it is."""
    import segserve_models.weights as weights
    from segserve.cli import main as segserve
    from segserve.contract.model_config import load_config

    manifest = tmp_path / "bundled.yaml"
    manifest.write_text("shapes_lraspp:\n  model: lraspp_mobilenet_v3_large\n  input_size: 64x64\n"
                        "  serving: {dynamic_batching: {preferred_batch_size: 1, max_queue_delay_ms: 1.5}}\n")
    monkeypatch.setattr(weights, "BUNDLED_MANIFEST", manifest)
    repo = tmp_path / "repo"
    assert segserve(["export", "--bundled", "--repository", str(repo), "--skip-existing"]) == 0
    config = load_config(repo / "shapes_lraspp")
    assert (config.input.height, config.max_batch_size, config.batch_size) == (64, 8, 1)
    assert config.dynamic_batching.max_queue_delay_ms == 1.5 and config.weights.source == "bundled"

    config.model_copy(update={"instances": 1}).dump(repo / "shapes_lraspp" / "config.yaml")
    assert segserve(["export", "--bundled", "--repository", str(repo), "--skip-existing"]) == 0
    assert load_config(repo / "shapes_lraspp").instances == 1 and not (repo / "shapes_lraspp" / "2").exists()
