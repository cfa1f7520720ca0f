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
    masks: Sequence[np.ndarray | None],
    boxes: Sequence[Sequence[float]],
    class_ids: Sequence[int],
    captions: Sequence[str],
    alpha: float = ALPHA,
    keypoints: Sequence[np.ndarray] | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
) -> np.ndarray:
    """(h, w, 3) image with each instance's (h, w) boolean mask (None: a model without masks)
    blended in its class colour, its box outlined, its caption (e.g. "circle 0.97") above the
    box and, for keypoint models, its (k, 3) keypoints (x, y, visibility; v = 0 is not drawn)
    joined by the ``skeleton``'s 1-based pairs (COCO's convention). Instances are drawn in the
    order given, each over the ones before: pass them best last to have the best on top."""
    out = rgb.copy()
    colours = palette(max(class_ids, default=0) + 2)[1:]  # class 0 is a real class here: skip black
    for mask, class_id in zip(masks, class_ids):
        if mask is None:
            continue
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match the image {rgb.shape[:2]}")
        out[mask] = (out[mask].astype(np.float32) * (1 - alpha) + colours[class_id].astype(np.float32) * alpha).round().astype(np.uint8)
    image = Image.fromarray(out)
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width = max(1, round(min(rgb.shape[:2]) / 200))
    for n, (box, class_id, text) in enumerate(zip(boxes, class_ids, captions)):
        colour = tuple(int(c) for c in colours[class_id])
        ink = (0, 0, 0) if sum(colour) > 384 else (255, 255, 255)
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=width)
        if keypoints is not None:
            _draw_keypoints(pen, np.asarray(keypoints[n], np.float32).reshape(-1, 3), skeleton, colour, ink, width)
        left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
        text_y = y1 - (bottom - top) - 2 if y1 >= (bottom - top) + 2 else y1
        pen.rectangle((x1, text_y, x1 + (right - left) + 2, text_y + (bottom - top) + 2), fill=colour)
        pen.text((x1 + 1, text_y - top + 1), text, fill=ink, font=font)
    return np.asarray(image)


def _draw_keypoints(pen: ImageDraw.ImageDraw, points: np.ndarray, skeleton: Sequence[tuple[int, int]],
                    colour: tuple[int, ...], ink: tuple[int, ...], width: int) -> None:
    """The skeleton's lines first, then each visible point as a dot ringed in the box's colour."""
    visible = points[:, 2] > 0
    for a, b in skeleton:
        if 1 <= a <= len(points) and 1 <= b <= len(points) and visible[a - 1] and visible[b - 1]:
            pen.line((*points[a - 1, :2], *points[b - 1, :2]), fill=colour, width=width)
    radius = 2 * width + 1
    for x, y, _ in points[visible]:
        pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=ink, outline=colour, width=width)


def caption(label: str, score: float | None) -> str:
    return label if score is None else f"{label} {score:.2f}"


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
