"""Label maps as pictures: the PASCAL VOC palette (what every served PNG and overlay colours a
class id with) and the palettised PNG of a label map. Free of the geometry codecs (and so of
torch): the client writes these PNGs too."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours, distinct for neighbouring ids and stable for a given id: the VOC
    colour map's bit-interleaving of the id (0, the background, is black)."""
    ids = np.arange(count)
    colours = np.zeros((count, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (shift * 3 + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


PALETTE = palette(256).ravel().tolist()  # PIL's putpalette form


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
