"""torch -> ONNX export into the model repository, with a parity check that fails loudly.

    segserve export --model lraspp_mobilenet_v3_large --weights pretrained
    segserve export --model fcn_resnet50 --weights random --input-size 384x384

Each export writes a new version folder (``<repo>/<name>/<N>/``) holding ``model.onnx``
(uint8 NCHW input with dynamic batch/height/width, normalisation and optional argmax in
the graph), ``weights.pt`` (for the torch backend) and ``export.json`` (provenance and
parity figures), plus the model's ``config.yaml``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from segserve.contract.artifacts import CONFIG_FILE, EXPORT_RECORD, ONNX_ARTIFACT, WEIGHTS_ARTIFACT
from segserve.contract.model_config import (
    AUTO_BATCH,
    DynamicBatching,
    InputSpec,
    ModelConfig,
    OutputSpec,
    Task,
    WeightsInfo,
    latest_version,
)
from segserve.contract.refine import PROBABILITIES_OUTPUT
from segserve.graphs import zoo
from segserve.graphs.serving import SemanticServingModule
from segserve_models.weights import (
    WeightsError,
    WeightsSpec,
    download,
    load_checkpoint,
    verify_bundled,
)

log = logging.getLogger(__name__)

OPSET = 17


class ExportError(RuntimeError):
    pass


@dataclass
class ParityReport:
    max_abs_diff: float  # logits, ONNX Runtime vs torch eager
    max_abs_logit: float
    label_agreement: float  # fraction of pixels whose argmax agrees
    batch: int
    height: int
    width: int

    @classmethod
    def compare(cls, got: np.ndarray, ref: np.ndarray) -> "ParityReport":
        """Logits (N, C, H, W) from the exported graph vs torch eager."""
        n, _, h, w = ref.shape
        return cls(
            max_abs_diff=float(np.abs(got - ref).max()),
            max_abs_logit=float(np.abs(ref).max()),
            label_agreement=float((got.argmax(1) == ref.argmax(1)).mean()),
            batch=n,
            height=h,
            width=w,
        )

    def check(self, rtol: float = 1e-3, min_agreement: float = 0.999) -> None:
        tol = rtol * max(1.0, self.max_abs_logit)
        if not (self.max_abs_diff <= tol and self.label_agreement >= min_agreement):
            raise ExportError(
                f"parity check failed: max |logit diff| {self.max_abs_diff:.3g} (allowed {tol:.3g}), "
                f"mask agreement {self.label_agreement:.5%} (required {min_agreement:.3%})"
            )


def resolve_weights(arch: zoo.Architecture, spec: WeightsSpec, progress: bool = True) -> tuple[dict | None, list[str] | None, str]:
    """(state_dict or None for random, class names if the weights define them, description)."""
    if spec.source == "random":
        return None, None, spec.describe()
    if spec.source == "pretrained":
        if arch.weights is None:
            raise WeightsError(f"{arch.name} has no pretrained weights registered")
        path = download(arch.weights.url, progress=progress)
        return load_checkpoint(path), arch.pretrained_classes, f"pretrained {arch.weights.url}"
    assert spec.path is not None
    if spec.source == "bundled":
        verify_bundled(spec.path)
    raw = torch.load(spec.path, map_location="cpu", weights_only=True) if spec.path.is_file() else None
    classes = raw.get("classes") if isinstance(raw, dict) else None
    return load_checkpoint(spec.path), classes, spec.describe()


def sample_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 images: closer to photos than white noise, so activations are realistic."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 16), max(2, width // 16), generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = torch.rand(batch, 3, height, width, generator=g) * 0.1
    return ((smooth + noise).clamp(0, 1) * 255).to(torch.uint8)


def onnx_export(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, dynamic_axes: dict) -> None:
    """torch -> ONNX with the legacy (TorchScript) exporter, names from the module's
    ``input_names``/``output_names``; the graph is checked before anyone loads it."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python ints in torchvision
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=list(module.input_names),
            output_names=list(module.output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def export_onnx(module: torch.nn.Module, path: Path, height: int, width: int, dynamic_hw: bool = False) -> None:
    """A semantic serving module. Batch is always dynamic. Height/width are fixed unless asked:
    the service letterboxes every image to the model's input size, and ONNX Runtime CPU plans
    static shapes better (docs/benchmarks.md)."""
    in_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    axes = {"images": in_axes}
    for out_name in module.output_names:  # labels (N, H, W); logits or probabilities (N, C, H, W)
        if out_name == "labels":
            axes[out_name] = {0: "batch", 1: "height", 2: "width"} if dynamic_hw else {0: "batch"}
        else:
            axes[out_name] = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    onnx_export(module, (sample_images(1, height, width),), path, axes)


def new_version_dir(repository: Path, name: str, version: int | None = None) -> Path:
    """``<repository>/<name>/<N>/``, created empty: N = ``version``, else one past the latest."""
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version_dir = model_dir / str(version or ((latest_version(model_dir) or 0) + 1))
    version_dir.mkdir(parents=True, exist_ok=False)
    return version_dir


def onnx_run(path: Path, images: np.ndarray, all_outputs: bool = False) -> np.ndarray | list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images})
    return outputs if all_outputs else outputs[0]


# The uint8 probabilities of the exported graph vs torch eager's: off by at most one step (rounding
# of a float that differs in the last bits), and the same argmax as the labels output.
MAX_PROBABILITY_STEP_DIFF = 1


def probabilities_parity(serving: torch.nn.Module, path: Path, height: int, width: int) -> dict:
    """The served graph's two outputs (labels, uint8 probabilities) vs torch eager's; raises if off."""
    images = sample_images(2, height, width, seed=3)
    with torch.no_grad():
        ref_labels, ref_probs = (t.numpy() for t in serving(images))
    labels, probs = onnx_run(path, images.numpy(), all_outputs=True)
    report = {
        "max_abs_step_diff": int(np.abs(probs.astype(np.int16) - ref_probs.astype(np.int16)).max()),
        "label_agreement": float((labels == ref_labels).mean()),
        "dtype": str(probs.dtype),
        "shape": list(probs.shape),
    }
    if report["max_abs_step_diff"] > MAX_PROBABILITY_STEP_DIFF or report["label_agreement"] < 0.999 or probs.dtype != np.uint8:
        raise ExportError(f"parity check failed on the probabilities output: {report}")
    return report


def parity(net: torch.nn.Module, height: int, width: int, workdir: Path, batch: int = 2, dynamic_hw: bool = False) -> ParityReport:
    """Logits from ONNX Runtime vs torch eager on a batch larger than the export example
    (so the dynamic batch axis is exercised too)."""
    logits_module = SemanticServingModule(net, "logits").eval()
    path = workdir / "parity_logits.onnx"
    export_onnx(logits_module, path, height, width, dynamic_hw)
    images = sample_images(batch, height, width, seed=1)
    with torch.no_grad():
        ref = logits_module(images).numpy()
    return ParityReport.compare(onnx_run(path, images.numpy()), ref)


def export_model(
    architecture: str,
    repository: Path,
    weights: WeightsSpec,
    *,
    name: str | None = None,
    classes: list[str] | None = None,
    input_size: tuple[int, int] | None = None,
    max_batch_size: int | None = None,
    output: str = "labels",
    version: int | None = None,
    instances: int = 2,
    dynamic_hw: bool = False,
    probabilities: bool = False,
    progress: bool = True,
) -> Path:
    """Export one model into ``repository``; returns the version folder written. ``probabilities``:
    a labels graph also outputs the uint8-quantised softmax (``probs``) that ``?refine=crf`` needs."""
    arch = zoo.get(architecture)
    if arch.task != "semantic":
        raise ExportError(f"{architecture} is a {arch.task} model; its exporter is not this one")
    if probabilities and output != "labels":
        raise ExportError("--probabilities adds the softmax next to labels; a logits graph already gives the scores")
    state, weight_classes, weights_detail = resolve_weights(arch, weights, progress=progress)
    classes = classes or weight_classes or arch.pretrained_classes
    if not classes:
        raise ExportError("no class names: pass --classes or use weights that carry them")
    height, width = input_size or arch.default_input

    torch.manual_seed(weights.seed)
    net = arch.build(len(classes)).eval()
    if state is not None:
        missing, unexpected = net.load_state_dict(zoo.strip_training_heads(arch, state), strict=False)
        if missing or unexpected:
            raise ExportError(f"weights do not fit {architecture}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    name = name or architecture
    version_dir = new_version_dir(repository, name, version)
    model_dir = version_dir.parent

    with tempfile.TemporaryDirectory() as tmp:
        report = parity(net, height, width, Path(tmp), dynamic_hw=dynamic_hw)
    log.info("parity %s: max|diff| %.3g, agreement %.5f", name, report.max_abs_diff, report.label_agreement)
    try:
        report.check()
        serving = SemanticServingModule(net, output, probabilities=probabilities).eval()
        export_onnx(serving, version_dir / ONNX_ARTIFACT, height, width, dynamic_hw)
        if probabilities:
            probabilities_report = probabilities_parity(serving, version_dir / ONNX_ARTIFACT, height, width)
        elif output == "labels":  # the served graph's argmax must agree with eager too
            images = sample_images(2, height, width, seed=2)
            with torch.no_grad():
                ref = serving(images).numpy()
            agree = float((onnx_run(version_dir / ONNX_ARTIFACT, images.numpy()) == ref).mean())
            if agree < 0.999:
                raise ExportError(f"parity check failed on the argmax graph: agreement {agree:.5%}")
        torch.save(serving.state_dict(), version_dir / WEIGHTS_ARTIFACT)
    except Exception:
        for f in version_dir.iterdir():
            f.unlink()
        version_dir.rmdir()
        raise

    source = weights.source
    config = ModelConfig(
        name=name,
        task=Task.semantic,
        architecture=architecture,
        classes=list(classes),
        input=InputSpec(height=height, width=width),
        output=OutputSpec(name=output, kind=output, probabilities=PROBABILITIES_OUTPUT if probabilities else None),
        max_batch_size=max_batch_size or arch.default_max_batch,
        # the batch the serving host runs fastest is measured there (a CPU's is not a GPU's)
        dynamic_batching=DynamicBatching(preferred_batch_size=AUTO_BATCH),
        # Two engine instances, each with half the CPU threads, beat one instance with all of
        # them by ~35% on a 2-core CPU (docs/benchmarks.md); on a GPU they overlap copies and compute.
        instances=instances,
        weights=WeightsInfo(source=source, detail=weights_detail),
    )
    config.dump(model_dir / CONFIG_FILE)
    provenance = {
        "architecture": architecture,
        "weights": weights_detail,
        "weights_source": source,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnx_opset": OPSET,
        "dynamic_hw": dynamic_hw,
        "parity": asdict(report),
    }
    if probabilities:
        provenance["probabilities_parity"] = probabilities_report
    (version_dir / EXPORT_RECORD).write_text(json.dumps(provenance, indent=2))
    return version_dir
