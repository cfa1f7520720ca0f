"""The device data path's pixel work as torch tensor functions, on whatever device the tensors
are on: JPEG decode (nvJPEG on CUDA, libjpeg-turbo on CPU, through torchvision), the letterbox,
the restore to the original size and the run boundaries COCO RLE is made of.

Each computes what its PIL/numpy counterpart does (``codecs.image``, ``Letterbox.apply`` /
``restore``, ``masks.semantic_segments``): on CPU the same values bit for bit (tests/test_tensor_image.py);
on CUDA the letterbox resizes in float32 and rounds (CUDA has no uint8 antialiased bilinear kernel),
which may differ from the CPU's fixed-point uint8 kernel by one level -- unverified on a GPU so far.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from segserve.codecs.geometry import Letterbox


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """1-D uint8 CPU tensors of JPEG files -> (3, h, w) uint8 RGB on ``device``, as displayed
    (EXIF orientation applied), in one batched call (nvJPEG's batched decode on CUDA)."""
    return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)


def resize_float(chw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, height, width) uint8: antialiased bilinear in float32, rounded."""
    if width == 1 and height > 1:
        # torch 2.14's float antialiased kernel (on CPU at least) gives a one-pixel-wide output the
        # first row's value all the way down: resize the transpose (the filter is separable: exact)
        return resize_float(chw.transpose(1, 2), width, height).transpose(1, 2)
    out = F.interpolate(chw[None].float(), size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_uint8(chw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(3, h, w) uint8 -> (3, height, width) uint8 with torch's CPU uint8 kernel, on the channels-last
    layout ``Letterbox.apply`` hands it (the kernel's fast path, and its exact rounding)."""
    hwc = chw.permute(1, 2, 0).contiguous()
    return F.interpolate(hwc.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def letterbox(chw: torch.Tensor, box: Letterbox, pad_value: tuple[int, int, int]) -> torch.Tensor:
    """``box.apply`` on a (3, h, w) uint8 tensor (the original, as decoded) -> (3, dst_h, dst_w) uint8."""
    if chw.shape[1:] != (box.content_h, box.content_w):
        resize = resize_uint8 if chw.device.type == "cpu" else resize_float
        chw = resize(chw, box.content_h, box.content_w)
    out = torch.empty((3, box.dst_h, box.dst_w), dtype=torch.uint8, device=chw.device)
    out[:] = torch.tensor(pad_value, dtype=torch.uint8, device=chw.device)[:, None, None]
    out[:, : box.content_h, : box.content_w] = chw
    return out


def restore(plane: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """``box.restore`` on a (dst_h, dst_w) tensor: (src_h, src_w), nearest, on the plane's device."""
    rows, cols = _restore_index(box, plane.device)
    return plane.index_select(0, rows).index_select(1, cols)


@lru_cache(maxsize=1024)
def _restore_index(box: Letterbox, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``box.restore_index()``'s two index maps on ``device``, uploaded once per geometry (read only after)."""
    index = box.restore_index()
    return torch.tensor(index.rows, device=device), torch.tensor(index.cols, device=device)


def run_starts(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (h, w) label map -> (where each run starts in its column-major flattening (int64,
    ascending, from 0), each run's value): what ``masks.segments_from_runs`` turns into RLEs."""
    flat = labels.t().reshape(-1)
    changes = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    torch.ne(flat[1:], flat[:-1], out=changes[1:])
    starts = changes.nonzero().squeeze(1)
    return starts, flat[starts]
