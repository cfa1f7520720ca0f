"""Image decoding with the limits that keep a server alive: pixel-count checks before the
pixels are decoded, and JPEG draft decoding when the model needs far fewer pixels."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from segserve.errors import TooManyPixels, UndecodableInput

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}

# PIL's own decompression-bomb guard is replaced by our explicit, configurable limit.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # (h, w, 3) uint8; may be smaller than the original when draft-decoded
    width: int  # original width, the geometry every mask is returned in
    height: int


DraftSize = Callable[[int, int], tuple[int, int]]  # original (h, w) -> smallest useful (h, w)


def decode_image(data: bytes, max_pixels: int, draft_size: DraftSize | None = None) -> DecodedImage:
    """Decode ``data`` to RGB. ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale as
    long as the result stays at least that large (the model resizes it down anyway): a
    12 MP photo for a 512 px model decodes several times faster."""
    if not data:
        raise UndecodableInput("empty body: expected image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise TooManyPixels(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            if image.format not in IMAGE_TYPES.values():
                raise UndecodableInput(f"unsupported image format {image.format}; send JPEG, PNG or WebP")
            if draft_size is not None and image.format == "JPEG":
                min_h, min_w = draft_size(height, width)
                image.draft("RGB", (min_w, min_h))
            rgb = np.array(image.convert("RGB"))  # writable (np.asarray's is not): torch can take it as is
    except (TooManyPixels, UndecodableInput):
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise UndecodableInput(f"cannot decode image: {exc}") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UndecodableInput("image has no pixels")
    return DecodedImage(rgb=rgb, width=width, height=height)
