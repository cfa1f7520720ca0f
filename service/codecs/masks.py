"""Masks out: COCO RLE (pycocotools) for JSON, palettised PNG label maps."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def encode_rle(masks: np.ndarray) -> list[dict]:
    """(h, w, n) or (h, w) binary masks -> COCO compressed RLEs with str counts."""
    if masks.ndim == 2:
        masks = masks[:, :, None]
    encoded = mask_utils.encode(np.asfortranarray(masks, dtype=np.uint8))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]


def semantic_segments(labels: np.ndarray, class_names: list[str]) -> list[dict]:
    """One binary RLE per class present in the label map, with its pixel area."""
    areas = np.bincount(labels.ravel(), minlength=len(class_names))
    present = np.flatnonzero(areas)
    if present.size == 0:
        return []
    # Column-major masks are what RLE walks; building them from labels.T avoids a copy per class.
    masks = (labels.T[None, :, :] == present[:, None, None].astype(labels.dtype)).transpose(2, 1, 0)
    rles = encode_rle(masks)
    return [
        {
            "class_id": int(c),
            "label": class_names[c] if c < len(class_names) else str(c),
            "area": int(areas[c]),
            "mask": rle,
        }
        for c, rle in zip(present, rles)
    ]


def _palette() -> list[int]:
    """The PASCAL VOC colour map: distinct colours for ids 0..255 (0 = black background)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


PALETTE = _palette()


def encode_label_png(labels: np.ndarray) -> bytes:
    """A label map as PNG: palettised 8-bit (pixel = id) up to 255, 16-bit grey above."""
    if labels.max(initial=0) <= 255:
        image = Image.fromarray(labels.astype(np.uint8))
        image.putpalette(PALETTE)  # turns the "L" image into "P" without touching the ids
    else:
        image = Image.fromarray(labels.astype(np.uint16))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
