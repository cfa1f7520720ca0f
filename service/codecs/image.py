"""Image decoding with the limits that keep a server alive: pixel-count checks before the
pixels are decoded, and JPEG draft decoding when the model needs far fewer pixels.

EXIF orientation is honoured: a phone photo stored sideways with an orientation tag is
segmented, and its masks returned, the way it is displayed (width and height included).

PIL reads every header and decodes PNG and WebP. Colour JPEGs, the common upload, are decoded
by simplejpeg (libjpeg-turbo, like PIL's, at the same DCT scale: the same pixels) straight into
a numpy array: PIL would copy its decoded image twice more on the way there (``tobytes``, then
``np.array``). A JPEG libjpeg-turbo warns about (extraneous bytes, a
truncated file) goes to PIL, which decides as before whether it decodes."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from segserve.errors import ServiceError, TooManyPixels, UndecodableInput

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}

# PIL's own decompression-bomb guard is replaced by our explicit, configurable limit.
Image.MAX_IMAGE_PIXELS = None


# EXIF orientations (tag 0x0112) that swap width and height when displayed
TRANSPOSED = {5, 6, 7, 8}
ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # (h, w, 3) uint8 as displayed; may be smaller than the original when draft-decoded
    width: int  # original width as displayed, the geometry every mask is returned in
    height: int


def describe(exc: Exception) -> str:
    """A decoder's error for the client: without object reprs and memory addresses."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip() or type(exc).__name__


DraftSize = Callable[[int, int], tuple[int, int]]  # original (h, w) -> smallest useful (h, w)


@dataclass(frozen=True)
class OpenedImage:
    """An image whose header has been read and checked, and its pixels reserved: nothing decoded yet."""

    data: bytes
    image: Image.Image  # PIL's lazy image on the bytes
    width: int  # as displayed (EXIF orientation applied)
    height: int
    orientation: int  # EXIF tag 0x0112, 1 when absent


def open_image(data: bytes, max_pixels: int, reserve: Callable[[int], None] | None = None) -> OpenedImage:
    """Read ``data``'s header: its format and size checked against ``max_pixels``, then
    ``reserve`` called with the pixel count it declares (it may raise), before any pixel is decoded."""
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
            if reserve is not None:
                reserve(width * height)
            orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except ServiceError:  # ours, and reserve's
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise UndecodableInput(f"cannot decode image: {describe(exc)}") from exc
    if orientation in TRANSPOSED:
        width, height = height, width
    return OpenedImage(data, image, width, height, orientation)


def decode_image(
    data: bytes, max_pixels: int, draft_size: DraftSize | None = None, reserve: Callable[[int], None] | None = None
) -> DecodedImage:
    """Decode ``data`` to RGB. ``draft_size`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale as
    long as the result stays at least that large (the model resizes it down anyway): a
    12 MP photo for a 512 px model decodes several times faster. ``reserve`` is called with
    the pixel count the header declares, before any pixel is decoded (it may raise)."""
    return decode_opened(open_image(data, max_pixels, reserve), draft_size)


def decode_opened(opened: OpenedImage, draft_size: DraftSize | None = None) -> DecodedImage:
    """``open_image``'s image decoded to RGB as displayed (``decode_image`` says what ``draft_size`` does)."""
    image, orientation = opened.image, opened.orientation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if draft_size is not None and image.format == "JPEG":
                min_h, min_w = draft_size(opened.height, opened.width)  # as displayed; the draft is in stored order
                image.draft("RGB", (min_h, min_w) if orientation in TRANSPOSED else (min_w, min_h))
            rgb = _turbo_rgb(opened.data, image, orientation)
            if rgb is None:
                if image.mode != "RGB":  # every JPEG drafted to "RGB" is already: convert would only copy it
                    image = image.convert("RGB")
                if orientation != 1:
                    image = ImageOps.exif_transpose(image)
                rgb = np.array(image)  # writable (np.asarray's is not): torch can take it as is
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise UndecodableInput(f"cannot decode image: {describe(exc)}") from exc
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UndecodableInput("image has no pixels")
    return DecodedImage(rgb=rgb, width=opened.width, height=opened.height)


# EXIF orientation -> the array op that displays the stored pixels (ImageOps.exif_transpose's)
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def _turbo_rgb(data: bytes, image: Image.Image, orientation: int) -> np.ndarray | None:
    """A colour JPEG's pixels at the size PIL's draft chose (``image.size``), as displayed;
    None for anything else, or a JPEG libjpeg-turbo warned about (PIL decodes those)."""
    if image.format != "JPEG" or image.mode != "RGB":
        return None
    width, height = image.size  # the drafted size, in stored order
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=height, min_width=width, strict=True)
    except ValueError:
        return None
    if rgb.shape[:2] != (height, width):  # another scale than PIL's: PIL's pixels, not these
        return None
    display = _ORIENT.get(orientation)  # 1, or a value exif_transpose ignores too
    return rgb if display is None else np.ascontiguousarray(display(rgb))
