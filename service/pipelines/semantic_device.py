"""The semantic pipeline's device data path (Settings.data_path): on a GPU host the per-request
CPU work -- JPEG decode, letterbox, argmax, restore to the original size, RLE -- becomes the
limit, so it runs as torch on the engine's device instead (segserve.codecs.tensor_image).

What moves where, per request:

    codec pool    the header read and checked, the pixels reserved (codecs.image.open_image); a JPEG
                  goes on as its bytes; PNG, WebP and JPEGs PIL must convert (CMYK...) are decoded and
                  letterboxed there as on the CPU path
    engine thread the batch's JPEGs decoded in one call (nvJPEG on CUDA), letterboxed, through the
                  engine (the torch backend takes them where they are; ONNX Runtime's labels are
                  copied up), argmax, each image restored to its size and its run starts found;
                  only those starts and their classes are copied back
    codec pool    the runs -> COCO RLE per class (codecs.masks.segments_from_runs): the same strings
                  and areas as the CPU path for the same label map

On CPU (torch CPU tensors) it computes what the CPU path computes, bit for bit, so the tests serve it
through the real server. On CUDA: one stream per engine instance, pinned staging for uploads, the
engine's fp16 -- none of it verified on a GPU yet (docs/benchmarks.md, "GPU check").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from segserve.codecs.geometry import Letterbox
from segserve.codecs.image import decode_opened, describe, open_image
from segserve.codecs.tensor_image import decode_jpegs, letterbox, restore, run_starts
from segserve.contract.model_config import UINT8_CLASSES, ModelConfig
from segserve.engine import Engine, TensorEngine

# What torchvision's decode_jpeg turns into RGB exactly as PIL does; other JPEG modes (CMYK, YCCK) take PIL's decode.
DEVICE_JPEG_MODES = ("RGB", "L")


@dataclass(frozen=True)
class JpegInput:
    """A JPEG file waiting in the batcher, decoded with its batch on the device."""

    data: torch.Tensor  # the file's bytes, 1-D uint8 on the CPU
    box: Letterbox


@dataclass(frozen=True)
class LetterboxedInput:
    """An image PIL decoded and the codec pool letterboxed (PNG, WebP, CMYK JPEG)."""

    image: np.ndarray  # (3, H, W) uint8 at the model input size
    box: Letterbox


@dataclass(frozen=True)
class DeviceLabels:
    """One image's answer: its model-resolution labels (left on the device) and the run starts of
    its restored label map (copied back), what its RLEs are made of."""

    labels: torch.Tensor  # (H, W) class ids at model resolution, on the device
    run_start: np.ndarray  # int64: where each run starts in the column-major (src_h, src_w) map
    run_value: np.ndarray  # each run's class

    def host_labels(self) -> np.ndarray:
        """The model-resolution map on the host (format=png, gRPC LABELS, overlays)."""
        return self.labels.cpu().numpy()


@dataclass(frozen=True)
class Undecodable:
    """A JPEG the device's decoder refused (its header was fine): the answer for that request alone."""

    reason: str


def choose_device(setting: str, config: ModelConfig, engine: Engine) -> tuple[torch.device | None, str]:
    """(the device the data path runs on, or None for the CPU path; why)."""
    engine_device = engine.device if isinstance(engine, TensorEngine) else None
    if setting == "cpu":
        return None, "data_path=cpu"
    if config.output.has_scores:
        return None, "the model gives class scores (refine=crf works on the CPU path)"
    if config.input.dtype != "uint8":
        return None, f"the model takes {config.input.dtype} input (the device path feeds uint8 graphs)"
    if setting == "auto":
        if engine_device is not None and engine_device.type == "cuda":
            return engine_device, "auto: the torch backend on CUDA"
        return None, "auto: not the torch backend on CUDA"
    if engine_device is not None:
        return engine_device, "data_path=device: the torch backend's device"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, f"data_path=device: {engine.info.backend}'s labels copied to {device}"


def decode_input(data: bytes, max_pixels: int, reserve: Callable[[int], None], geometry: Callable[[int, int], Letterbox],
                 to_input: Callable[[Letterbox, np.ndarray], np.ndarray]) -> JpegInput | LetterboxedInput:
    """The codec pool's part: the header checked and reserved, then the JPEG's bytes as they are,
    or any other image decoded and letterboxed (``to_input``) as on the CPU path."""
    opened = open_image(data, max_pixels, reserve)
    box = geometry(opened.height, opened.width)
    if opened.image.format == "JPEG" and opened.image.mode in DEVICE_JPEG_MODES:
        return JpegInput(torch.frombuffer(bytearray(data), dtype=torch.uint8), box)
    image = decode_opened(opened, lambda h, w: box.min_decode_size())
    return LetterboxedInput(to_input(box, image.rgb), box)


class DeviceRunner:
    """The batcher's runner for one engine instance on the device path. A batch may mix
    ``JpegInput``, ``LetterboxedInput`` and plain (3, H, W) uint8 arrays (warm-up, video frames
    through the image batcher): those get (H, W) labels on the host, as from the CPU path."""

    def __init__(self, engine: Engine, config: ModelConfig, device: torch.device):
        self.engine = engine
        self.config = config
        self.device = device
        spec = config.input
        self.pad_value = tuple(spec.pad_value)
        cuda = device.type == "cuda"
        # its own stream: instances on one GPU overlap their copies and kernels
        self.stream = torch.cuda.Stream(device) if cuda else None
        # uploads of host-letterboxed images from page-locked memory (an async DMA, not a staged copy)
        self.staging = (torch.empty((config.batch_size, 3, spec.height, spec.width), dtype=torch.uint8, pin_memory=True)
                        if cuda else None)

    def __call__(self, batch: list[Any]) -> list[Any]:
        stream = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), stream:
            images, failed = self._images(batch)
            ok = [i for i in range(len(batch)) if i not in failed]
            planes = self._labels(torch.stack([images[i] for i in ok])) if ok else []
            results: list[Any] = [None] * len(batch)
            for i, reason in failed.items():
                results[i] = Undecodable(reason)
            for i, plane in zip(ok, planes):
                item = batch[i]
                if isinstance(item, np.ndarray):
                    results[i] = plane.cpu().numpy()
                    continue
                starts, values = run_starts(restore(plane, item.box))
                results[i] = DeviceLabels(plane, starts.cpu().numpy(), values.cpu().numpy())
            return results

    def _images(self, batch: list[Any]) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
        """Every item's (3, H, W) uint8 model input on the device; the JPEGs the decoder refused."""
        images: dict[int, torch.Tensor] = {}
        failed: dict[int, str] = {}
        jpegs = [i for i, item in enumerate(batch) if isinstance(item, JpegInput)]
        for i, decoded in zip(jpegs, self._decode([batch[i].data for i in jpegs])):
            box = batch[i].box
            if isinstance(decoded, str):
                failed[i] = decoded
            elif decoded.shape[1:] != (box.src_h, box.src_w):  # the header said otherwise
                failed[i] = f"cannot decode image: decoded {decoded.shape[2]}x{decoded.shape[1]}, header says {box.src_w}x{box.src_h}"
            else:
                images[i] = letterbox(decoded, box, self.pad_value)
        hosted = [i for i in range(len(batch)) if i not in images and i not in failed]
        if hosted:
            arrays = [item.image if isinstance(item, LetterboxedInput) else item for item in (batch[i] for i in hosted)]
            for i, image in zip(hosted, self._upload(arrays)):
                images[i] = image
        return images, failed

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | str]:
        """The batch's JPEGs in one call; when that fails, one by one, so that a corrupt file fails
        its own request only (its reason in place of its image)."""
        if not datas:
            return []
        try:
            return list(decode_jpegs(datas, self.device))
        except RuntimeError:
            pass
        decoded: list[torch.Tensor | str] = []
        for data in datas:
            try:
                decoded.append(decode_jpegs([data], self.device)[0])
            except RuntimeError as exc:
                # torchvision prefixes its source location: "decode_jpeg, <file>:<line>, <reason>"
                decoded.append(f"cannot decode image: {describe(exc).rsplit(', ', 1)[-1]}")
        return decoded

    def _upload(self, arrays: list[np.ndarray]) -> torch.Tensor:
        stacked = np.stack(arrays)
        if self.staging is None:
            return torch.from_numpy(stacked).to(self.device)
        host = self.staging[: len(arrays)]
        host.numpy()[:] = stacked
        # non_blocking from pinned memory; the batch ends with copies back that wait on this stream
        return host.to(self.device, non_blocking=True)

    def _labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 on the device -> (N, H, W) class ids on the device."""
        config = self.config
        if isinstance(self.engine, TensorEngine):
            out = self.engine.infer_tensors({config.input.name: images})[config.output.name]
        else:  # ONNX Runtime: host arrays in and out, its labels (or logits) copied up
            out = self.engine.infer({config.input.name: images.cpu().numpy()})[config.output.name]
            out = torch.from_numpy(out).to(self.device)
        if config.output.kind == "logits":
            out = out.argmax(dim=1).to(torch.uint8 if out.shape[1] <= UINT8_CLASSES else torch.int32)
        return out
