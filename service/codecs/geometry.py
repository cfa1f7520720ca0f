"""Letterboxing: many image sizes into one model input size, and masks back to each original.

An image of any size is resized (aspect kept) to fit the model input and padded at the
bottom/right, so images of different sizes batch together; the inverse crops the content
region and maps each original pixel to the model pixel its centre falls in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segserve.contract.model_config import InputSpec, ResizeMode


@dataclass(frozen=True)
class Letterbox:
    src_h: int  # original image size
    src_w: int
    dst_h: int  # model input size
    dst_w: int
    content_h: int  # the resized image inside the model input
    content_w: int

    @classmethod
    def fit(cls, src_h: int, src_w: int, spec: InputSpec) -> "Letterbox":
        if spec.resize == ResizeMode.stretch:
            return cls(src_h, src_w, spec.height, spec.width, spec.height, spec.width)
        scale = min(spec.height / src_h, spec.width / src_w)
        content_h = min(spec.height, max(1, round(src_h * scale)))
        content_w = min(spec.width, max(1, round(src_w * scale)))
        return cls(src_h, src_w, spec.height, spec.width, content_h, content_w)

    def apply(self, rgb: np.ndarray, pad_value: tuple[int, int, int]) -> np.ndarray:
        """(h, w, 3) uint8 (the original or a draft-decoded smaller copy) -> (3, dst_h, dst_w) uint8.

        The resize is PIL's (bilinear, antialiased when shrinking: what the models were
        trained with) as torch computes it: within 2 levels of PIL's (mean difference 0.03)
        at 2.5x its speed, ~1.5 instead of ~3.9 ms for 640x480 -> 512x384, which is the
        largest per-request CPU cost besides the model."""
        if rgb.shape[:2] != (self.content_h, self.content_w):
            hwc = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())
            chw = F.interpolate(
                hwc.permute(2, 0, 1)[None], size=(self.content_h, self.content_w), mode="bilinear", antialias=True, align_corners=False
            )[0].numpy()
        else:
            chw = rgb.transpose(2, 0, 1)
        out = np.empty((3, self.dst_h, self.dst_w), dtype=np.uint8)
        out[:] = np.asarray(pad_value, dtype=np.uint8)[:, None, None]
        out[:, : self.content_h, : self.content_w] = chw
        return out

    def restore(self, plane: np.ndarray) -> np.ndarray:
        """(dst_h, dst_w) per-pixel values at model resolution -> (src_h, src_w), nearest."""
        rows = ((np.arange(self.src_h) + 0.5) * (self.content_h / self.src_h)).astype(np.intp)
        cols = ((np.arange(self.src_w) + 0.5) * (self.content_w / self.src_w)).astype(np.intp)
        np.minimum(rows, self.content_h - 1, out=rows)
        np.minimum(cols, self.content_w - 1, out=cols)
        # two 1-D gathers: ~2x faster than one 2-D fancy index over the broadcast grid
        return plane.take(rows, axis=0).take(cols, axis=1)

    def min_decode_size(self) -> tuple[int, int]:
        """The smallest (h, w) a draft decode may produce without losing model-input detail."""
        return self.content_h, self.content_w
