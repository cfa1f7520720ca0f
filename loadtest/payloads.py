"""Request bodies for load tests: images and video chunks read from a directory, or small
deterministic ones generated in memory when no directory is given.

Generated payloads keep the repository free of binary fixtures while every run (and every
machine) sends byte-identical bodies, so results stay comparable.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
VIDEO_TYPES = {".mp4": "video/mp4"}


@dataclass(frozen=True)
class Payload:
    name: str
    content_type: str
    body: bytes


@dataclass(frozen=True)
class PayloadSet:
    images: tuple[Payload, ...]
    videos: tuple[Payload, ...]


def synthetic_scene(width: int, height: int, seed: int) -> Image.Image:
    """A street-like picture (sky, ground, a few blobs, sensor noise): enough structure that
    JPEG sizes and decode costs resemble a photo rather than a flat colour."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    sky = np.array([110, 160, 230], np.float32)
    ground = np.array([90, 80, 70], np.float32)
    horizon = 0.55
    pixels = np.where(rows < horizon, sky * (1 - 0.4 * rows), ground * (0.6 + 0.6 * rows))
    pixels = np.broadcast_to(pixels, (height, width, 3)).copy()
    pixels += rng.normal(0.0, 6.0, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x, y = rng.integers(0, width), rng.integers(int(height * 0.3), height)
        w, h = rng.integers(width // 12, width // 4), rng.integers(height // 10, height // 3)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x - w, y - h, x + w, y + h], fill=colour)
    return image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def synthetic_video(width: int = 160, height: int = 120, frames: int = 8, fps: int = 8) -> bytes:
    """A short H.264 MP4 chunk of a moving scene. PyAV is imported here only: image-only runs
    (and the ab wrapper) do not pay for it."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        base = np.asarray(synthetic_scene(width * 2, height, seed=7))
        for index in range(frames):
            shift = index * width // frames  # pan across the wider scene
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, shift : shift + width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


@lru_cache(maxsize=1)
def default_images() -> tuple[Payload, ...]:
    return (
        Payload("scene-640x480.jpg", "image/jpeg", _encode(synthetic_scene(640, 480, seed=1), "JPEG")),
        Payload("scene-320x240.png", "image/png", _encode(synthetic_scene(320, 240, seed=2), "PNG")),
    )


@lru_cache(maxsize=1)
def default_videos() -> tuple[Payload, ...]:
    return (Payload("pan-160x120x8.mp4", "video/mp4", synthetic_video()),)


def _read_dir(directory: Path, types: dict[str, str]) -> tuple[Payload, ...]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in types)
    return tuple(Payload(p.name, types[p.suffix.lower()], p.read_bytes()) for p in files)


def load_payloads(directory: Path | None, *, need_video: bool = False) -> PayloadSet:
    """Images and videos from ``directory`` (by extension); a kind the directory lacks falls
    back to the generated defaults. Videos are only generated when ``need_video``."""
    images: tuple[Payload, ...] = ()
    videos: tuple[Payload, ...] = ()
    if directory is not None:
        if not directory.is_dir():
            raise FileNotFoundError(f"payload directory {directory} does not exist")
        images, videos = _read_dir(directory, IMAGE_TYPES), _read_dir(directory, VIDEO_TYPES)
    return PayloadSet(
        images=images or default_images(),
        videos=videos or (default_videos() if need_video else ()),
    )


def image_from_file(path: Path) -> Payload:
    content_type = IMAGE_TYPES.get(path.suffix.lower())
    if content_type is None:
        raise ValueError(f"{path}: unknown image type (expected one of {', '.join(IMAGE_TYPES)})")
    return Payload(path.name, content_type, path.read_bytes())
