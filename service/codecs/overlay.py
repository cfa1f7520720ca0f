"""Masks you can look at: the input image with its masks blended in, as pure functions of
pixels (numpy + PIL, no I/O). The server's ``?format=overlay`` and the client's
``Result.overlay()`` both draw through these, so the two pictures are the same."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segserve.codecs.labels import palette

ALPHA = 0.5  # the mask's share of a blended pixel
JPEG_QUALITY = 85


def blend_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = ALPHA, background: int = 0) -> np.ndarray:
    """(h, w, 3) image with each pixel of class c != ``background`` blended towards class c's
    colour; the background is left as it is."""
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label map {labels.shape} does not match the image {rgb.shape[:2]}")
    colours = palette(int(labels.max(initial=0)) + 1)
    painted = labels != background
    out = rgb.copy()
    mixed = rgb[painted].astype(np.float32) * (1 - alpha) + colours[labels[painted]].astype(np.float32) * alpha
    out[painted] = mixed.round().astype(np.uint8)
    return out


def draw_instances(
    rgb: np.ndarray,
    masks: Sequence[np.ndarray],
    boxes: Sequence[Sequence[float]],
    class_ids: Sequence[int],
    captions: Sequence[str],
    alpha: float = ALPHA,
) -> np.ndarray:
    """(h, w, 3) image with each instance's (h, w) boolean mask blended in its class colour,
    its box outlined and its caption (e.g. "circle 0.97") above the box. Instances are drawn
    in the order given, each over the ones before: pass them best last to have the best on top."""
    out = rgb.copy()
    colours = palette(max(class_ids, default=0) + 2)[1:]  # class 0 is a real class here: skip black
    for mask, class_id in zip(masks, class_ids):
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match the image {rgb.shape[:2]}")
        out[mask] = (out[mask].astype(np.float32) * (1 - alpha) + colours[class_id].astype(np.float32) * alpha).round().astype(np.uint8)
    image = Image.fromarray(out)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width = max(1, round(min(rgb.shape[:2]) / 200))
    for box, class_id, caption in zip(boxes, class_ids, captions):
        colour = tuple(int(c) for c in colours[class_id])
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=width)
        left, top, right, bottom = pen.textbbox((0, 0), caption, font=font)
        text_y = y1 - (bottom - top) - 2 if y1 >= (bottom - top) + 2 else y1
        pen.rectangle((x1, text_y, x1 + (right - left) + 2, text_y + (bottom - top) + 2), fill=colour)
        pen.text((x1 + 1, text_y - top + 1), caption, fill=(0, 0, 0) if sum(colour) > 384 else (255, 255, 255), font=font)
    return np.asarray(image)


def caption(label: str, score: float | None) -> str:
    return label if score is None else f"{label} {score:.2f}"


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
