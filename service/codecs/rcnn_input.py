"""Images -> the canvas batch the backbone eats, and the sizes to map results back (boxes,
keypoints).

Resizing follows torchvision's ``GeneralizedRCNNTransform`` exactly (scale = min(min_size /
short side, max_size / long side), output size floor(side * scale), bilinear on floats), so
boxes and masks come out where torchvision eager puts them. The resized image sits at the
top-left of a canvas, as torchvision's own ``batch_images`` places it; the canvas is padded
to a multiple of 32 (every FPN stride divides it).

Batching images of different sizes: each image is resized on its own (request side);
``collate`` places them top-left in a batch canvas of the smallest multiple of 32 that
holds the largest -- the same padding torchvision uses for that batch. The padding's
value does not matter: the backbone zeroes it after normalising, as torchvision does.

Canvas dtype: float32 keeps the resized pixels unrounded, so the backbone sees exactly
torchvision's input and served instances match eager (the issue's parity criterion).
uint8 moves 4x fewer bytes but rounds every resized pixel by up to half a grey level,
which moves scores by ~1e-3 and boxes by ~0.5 px on a trained model -- enough to break
that criterion; it matches eager only on images torchvision does not resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segserve.contract.instance import round_up


@dataclass(frozen=True)
class ImageMeta:
    original_size: tuple[int, int]  # (h, w) of the image as received
    resized_size: tuple[int, int]  # (h, w) of it inside the canvas


def resize_scale(height: int, width: int, min_size: int, max_size: int, canvas: tuple[int, int] | None = None) -> float:
    """torchvision's eval-time scale; also shrunk to fit ``canvas`` when the image would not
    (a portrait image in a landscape canvas) -- the only departure from torchvision."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    if canvas is not None and (math.floor(height * scale) > canvas[0] or math.floor(width * scale) > canvas[1]):
        scale = min(canvas[0] / height, canvas[1] / width)
    return scale


def resized_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """torchvision's output size, floor(side * scale), but never 0: an image of extreme aspect
    ratio (1x10000) keeps a row or column of pixels instead of breaking the resize."""
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def resize(image: np.ndarray, scale: float, dtype: str = "float32") -> torch.Tensor:
    """HWC uint8 -> CHW resized the way torchvision does (float bilinear, no antialias,
    size = floor(side * scale)), values 0..255: float32 as computed, or uint8 rounded."""
    # decoded images can be read-only numpy views of PIL memory, or padded rows of a video
    # frame; torch wants a writable, contiguous array (copied only when it is neither)
    array = np.ascontiguousarray(image) if image.flags.writeable else image.copy(order="C")
    chw = torch.from_numpy(array).permute(2, 0, 1)
    if scale != 1.0:
        # the size torchvision's scale_factor + recompute_scale_factor gives, passed as a size
        # so that it can be kept >= 1 (the interpolation is the same: input/output ratio)
        size = resized_size(*image.shape[:2], scale)
        chw = F.interpolate(chw[None].float(), size=size, mode="bilinear", align_corners=False)[0]
        if dtype == "uint8":
            return chw.round_().clamp_(0, 255).to(torch.uint8)
    return chw.to(getattr(torch, dtype))


def preprocess(
    image: np.ndarray, min_size: int, max_size: int, canvas: tuple[int, int], dtype: str = "float32"
) -> tuple[np.ndarray, ImageMeta]:
    """One RGB HWC uint8 image -> its resized (3, h, w) pixels (0..255, ``dtype``) and meta;
    never larger than ``canvas``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    resized = resize(image, resize_scale(height, width, min_size, max_size, canvas), dtype).numpy()
    return resized, ImageMeta(original_size=(height, width), resized_size=resized.shape[1:])


def collate(images: list[np.ndarray], metas: list[ImageMeta]) -> dict[str, np.ndarray]:
    """The backbone's inputs for a batch: ``images`` (B, 3, H, W), each image top-left, H/W
    the multiples of 32 that hold the largest, and ``image_sizes`` (B, 2) int32 (h, w)."""
    sizes = np.array([m.resized_size for m in metas], dtype=np.int32)
    height, width = round_up(int(sizes[:, 0].max())), round_up(int(sizes[:, 1].max()))
    batch = np.zeros((len(images), 3, height, width), dtype=images[0].dtype)
    for out, image in zip(batch, images):
        out[:, : image.shape[1], : image.shape[2]] = image
    return {"images": batch, "image_sizes": sizes}


def scale_boxes(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Network-input boxes -> original-image boxes (torchvision's resize_boxes, float32)."""
    (oh, ow), (rh, rw) = meta.original_size, meta.resized_size
    ratio_w = np.float32(ow) / np.float32(rw)
    ratio_h = np.float32(oh) / np.float32(rh)
    return boxes.astype(np.float32) * np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)


def scale_keypoints(keypoints: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Network-input keypoints (N, K, 3) -> original-image ones: torchvision's resize_keypoints
    (x and y times the float32 size ratios, visibility kept, nothing clipped)."""
    (oh, ow), (rh, rw) = meta.original_size, meta.resized_size
    scaled = keypoints.astype(np.float32, copy=True)
    scaled[..., 0] *= np.float32(ow) / np.float32(rw)
    scaled[..., 1] *= np.float32(oh) / np.float32(rh)
    return scaled
