"""What ``segment`` accepts -- a path, bytes, a PIL image or a numpy array -- as the bytes the
server decodes, and back as the pixels the overlay is drawn on (decoded as the server decodes
them, EXIF orientation included, so masks and pixels line up)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from segserve.codecs.image import decode_image

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
NO_PIXEL_LIMIT = 1 << 62  # the server enforces its own; here the caller's image is the caller's


@dataclass(frozen=True)
class Payload:
    data: bytes
    content_type: str
    name: str  # for messages: the file name, else what kind of object it was


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def to_png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def array_to_image(array: np.ndarray) -> Image.Image:
    """(h, w) grey or (h, w, 3) RGB uint8 (other integer or float arrays in 0..255 are cast)."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"an image array is (h, w), (h, w, 3) or (h, w, 4); got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def payload(image: ImageInput) -> Payload:
    """The bytes to send: JPEG/PNG/WebP files and bytes as they are, anything else as PNG."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        data, name = path.read_bytes(), str(path)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data, name = bytes(image), "bytes"
    elif isinstance(image, Image.Image):  # lossless: the pixels as the caller holds them
        return Payload(to_png(image), "image/png", "PIL image")
    elif isinstance(image, np.ndarray):
        return Payload(to_png(array_to_image(image)), "image/png", f"array {image.shape}")
    else:
        raise TypeError(f"segment() takes a path, bytes, a PIL image or a numpy array, not {type(image).__name__}")
    kind = sniff(data)
    if kind is None:  # e.g. BMP or TIFF: PIL may read it; if not, the server says why
        try:
            return Payload(to_png(Image.open(io.BytesIO(data))), "image/png", name)
        except Exception:  # noqa: BLE001 - not an image PIL knows: let the server answer 415/422
            return Payload(data, "application/octet-stream", name)
    return Payload(data, kind, name)


def pixels(image: ImageInput | Payload) -> np.ndarray:
    """(h, w, 3) uint8 RGB as the server sees the image (EXIF orientation applied)."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    data = image.data if isinstance(image, Payload) else payload(image).data
    return decode_image(data, NO_PIXEL_LIMIT).rgb


def kept_for_overlay(image: ImageInput, sent: Payload) -> ImageInput | Payload:
    """What a Result keeps to draw ``overlay()`` on: an RGB array as it is, else the bytes sent."""
    return image if isinstance(image, np.ndarray) else sent
