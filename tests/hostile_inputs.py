"""Hostile inputs for the decoders and the upload routes, made in memory (no binary fixtures).

Seeds: tiny real JPEG/PNG/WebP images and MP4/WebM/Matroska chunks made with PIL and PyAV.
Crafted headers: the same files with the sizes their headers declare rewritten (PNG IHDR with
a valid CRC, JPEG SOF, WebP VP8/VP8L/VP8X, BMP, Matroska MJPEG frames), so a few hundred
bytes claim up to 65535x65535 or 2^31 x 2^31 pixels.

``CORPUS`` is the hostile-input corpus that tests/test_fuzz.py sends to /segment and
/segment/video, each case with the answer it must get. To replay it against a live server:

    python -m tests.hostile_inputs out/hostile   # writes every body plus index.json
                                                  # (route, content type, query, expected status and code)
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image

# -- seeds -------------------------------------------------------------------------------


def picture(height: int = 12, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_bytes(fmt: str, height: int = 12, width: int = 16, mode: str = "RGB", **save) -> bytes:
    image = Image.fromarray(picture(height, width)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@lru_cache(maxsize=None)
def image_seeds() -> tuple[bytes, ...]:
    """Real images of every accepted format and a few modes: what mutations start from."""
    return (
        image_bytes("JPEG"),
        image_bytes("JPEG", progressive=True),
        image_bytes("JPEG", mode="L"),
        image_bytes("PNG"),
        image_bytes("PNG", mode="P"),
        image_bytes("PNG", mode="RGBA"),
        image_bytes("PNG", mode="I;16"),
        image_bytes("WEBP"),
        image_bytes("WEBP", lossless=True),
    )


def video_bytes(codec: str, container: str, frames: int = 4, height: int = 16, width: int = 16, pix_fmt: str = "yuv420p") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=10)
        stream.height, stream.width, stream.pix_fmt = height, width, pix_fmt
        for i in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture(height, width, seed=i), format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


VIDEO_SEEDS = (  # (codec, container, pix_fmt, content type)
    ("libx264", "mp4", "yuv420p", "video/mp4"),
    ("mpeg4", "mp4", "yuv420p", "video/mp4"),
    ("libvpx", "webm", "yuv420p", "video/webm"),
    ("mjpeg", "matroska", "yuvj420p", "video/x-matroska"),
)


@lru_cache(maxsize=None)
def video_seeds() -> tuple[bytes, ...]:
    return tuple(video_bytes(codec, container, pix_fmt=pix_fmt) for codec, container, pix_fmt, _ in VIDEO_SEEDS
                 if codec in av.codecs_available)


# -- crafted headers ---------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR (valid CRC) declares ``width`` x ``height``; a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int, seed: bytes | None = None) -> bytes:
    """A real JPEG whose SOF marker(s) now declare ``width`` x ``height`` (16 bits each)."""
    data = bytearray(seed or image_bytes("JPEG"))
    for marker in (b"\xff\xc0", b"\xff\xc2"):  # baseline, progressive
        at = data.find(marker)
        while at >= 0:
            struct.pack_into(">HH", data, at + 5, height & 0xFFFF, width & 0xFFFF)
            at = data.find(marker, at + 2)
    return bytes(data)


def webp_vp8x_declaring(width: int, height: int) -> bytes:
    """A VP8X (extended) WebP whose canvas claims ``width`` x ``height`` (24 bits each), over a 16x12 VP8 image."""
    lossy = image_bytes("WEBP")
    vp8 = lossy[12:]  # the VP8 chunk, header included
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + ((width - 1) & 0xFFFFFF).to_bytes(3, "little") \
        + ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
    body = b"WEBP" + vp8x + vp8
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8_declaring(width: int, height: int) -> bytes:
    """A lossy WebP whose VP8 frame header claims ``width`` x ``height`` (14 bits each)."""
    data = bytearray(image_bytes("WEBP"))
    at = data.find(b"\x9d\x01\x2a") + 3
    struct.pack_into("<HH", data, at, width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


def webp_vp8l_declaring(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header claims ``width`` x ``height`` (14 bits each)."""
    data = bytearray(image_bytes("WEBP", lossless=True))
    at = data.find(b"VP8L") + 8
    assert data[at] == 0x2F
    bits = int.from_bytes(data[at + 1:at + 5], "little")
    bits = (bits & ~0xFFFFFFF) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    data[at + 1:at + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A BMP header claiming ``width`` x ``height`` (a format the server does not take)."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 48, 0, 0, 14 + len(info)) + info + b"\x00" * 48


def mjpeg_video_declaring(width: int, height: int) -> bytes:
    """A Matroska MJPEG chunk whose every frame's SOF claims ``width`` x ``height``."""
    data = bytearray(video_bytes("mjpeg", "matroska", pix_fmt="yuvj420p"))
    at = data.find(b"\xff\xc0")
    while at >= 0:
        struct.pack_into(">HH", data, at + 5, height & 0xFFFF, width & 0xFFFF)
        at = data.find(b"\xff\xc0", at + 2)
    return bytes(data)


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image_bytes("JPEG", exif=exif.tobytes())


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "hostileboundary") -> bytes:
    """parts: (field name, filename or None, content type or None, data)."""
    out = io.BytesIO()
    for name, filename, content_type, data in parts:
        out.write(f"--{boundary}\r\n".encode())
        disposition = f'Content-Disposition: form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(disposition.encode() + b"\r\n")
        if content_type:
            out.write(f"Content-Type: {content_type}\r\n".encode())
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def multipart_type(boundary: str = "hostileboundary") -> str:
    return f"multipart/form-data; boundary={boundary}"


# -- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    route: str  # /segment or /segment/video
    content_type: str | None
    body: bytes
    status: int | tuple[int, ...]  # the answer it must get (any of them, when a tuple)
    code: str | None = None  # the error code, when the answer is an error
    params: dict = field(default_factory=dict)


def corpus(limits: dict) -> list[Hostile]:
    """Hostile cases for a server with ``limits`` (its max_body_bytes, max_image_pixels, video_max_frames)."""
    jpeg, png, webp = image_bytes("JPEG"), image_bytes("PNG"), image_bytes("WEBP")
    mp4 = video_bytes("libx264", "mp4")
    too_long = b"\xff\xd8" + b"\x00" * limits["max_body_bytes"]
    ok, bad = 200, 422
    cases = [
        # not an image
        Hostile("empty", "/segment", "image/jpeg", b"", bad, "undecodable_input"),
        Hostile("garbage", "/segment", "image/png", b"\x00\x01garbage" * 50, bad, "undecodable_input"),
        Hostile("html_as_png", "/segment", "image/png", b"<html><body>hi</body></html>", bad, "undecodable_input"),
        Hostile("svg", "/segment", "image/png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', bad,
                "undecodable_input"),
        Hostile("jpeg_markers_only", "/segment", "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\xff" * 64, bad,
                "undecodable_input"),
        Hostile("gif", "/segment", "image/jpeg", image_bytes("GIF"), bad, "undecodable_input"),
        Hostile("tiff", "/segment", "image/jpeg", image_bytes("TIFF"), bad, "undecodable_input"),
        Hostile("text_plain", "/segment", "text/plain", jpeg, 415, "unsupported_media_type"),
        Hostile("json_body", "/segment", "application/json", b'{"image": "x"}', 415, "unsupported_media_type"),
        Hostile("no_content_type", "/segment", None, jpeg, 415, "unsupported_media_type"),
        Hostile("too_long", "/segment", "image/jpeg", too_long, 413, "payload_too_large"),
        # truncated real images
        *[Hostile(f"{name}_cut_{keep}", "/segment", ctype, data[:max(1, len(data) * keep // 100)], bad, "undecodable_input")
          for name, ctype, data in (("jpeg", "image/jpeg", jpeg), ("png", "image/png", png), ("webp", "image/webp", webp))
          for keep in (5, 50, 90)],
        # headers that claim far more pixels than the bytes hold
        Hostile("png_65535x65535", "/segment", "image/png", png_declaring(65535, 65535), bad, "too_many_pixels"),
        Hostile("png_2^31x2^31", "/segment", "image/png", png_declaring(2**31 - 1, 2**31 - 1), bad),
        Hostile("png_1x100M", "/segment", "image/png", png_declaring(1, 100_000_000), bad, "too_many_pixels"),
        Hostile("png_0x0", "/segment", "image/png", png_declaring(0, 0), bad, "undecodable_input"),
        Hostile("png_bad_depth", "/segment", "image/png", png_declaring(16, 12, bit_depth=7, colour_type=5), bad,
                "undecodable_input"),
        Hostile("png_just_under_limit", "/segment", "image/png", png_declaring(limits["max_image_pixels"], 1), bad,
                "undecodable_input"),
        Hostile("jpeg_65500x65500", "/segment", "image/jpeg", jpeg_declaring(65500, 65500), bad, "too_many_pixels"),
        Hostile("jpeg_0x0", "/segment", "image/jpeg", jpeg_declaring(0, 0), bad, "undecodable_input"),
        Hostile("progressive_jpeg_60000x60000", "/segment", "image/jpeg",
                jpeg_declaring(60000, 60000, image_bytes("JPEG", progressive=True)), bad, "too_many_pixels"),
        Hostile("webp_vp8x_16Mx16M", "/segment", "image/webp", webp_vp8x_declaring(2**24, 2**24), bad),
        Hostile("webp_vp8_16383x16383", "/segment", "image/webp", webp_vp8_declaring(16383, 16383), bad),
        Hostile("webp_vp8l_16384x16384", "/segment", "image/webp", webp_vp8l_declaring(16384, 16384), bad),
        Hostile("bmp_2^30x2^30", "/segment", "image/jpeg", bmp_declaring(2**30, 2**30), bad, "too_many_pixels"),
        Hostile("bmp_negative", "/segment", "image/jpeg", bmp_declaring(-5, -(2**31)), bad),
        # odd but valid images: served
        *[Hostile(f"exif_orientation_{o}", "/segment", "image/jpeg", exif_jpeg(o), ok) for o in (0, 6, 9, 65535)],
        Hostile("png_16bit", "/segment", "image/png", image_bytes("PNG", mode="I;16"), ok),
        Hostile("jpeg_cmyk", "/segment", "image/jpeg", image_bytes("JPEG", mode="CMYK"), ok),
        Hostile("png_1x1", "/segment", "image/png", image_bytes("PNG", 1, 1), ok),
        Hostile("jpeg_as_png", "/segment", "image/png", jpeg, ok),  # the bytes decide, not the label
        Hostile("octet_stream", "/segment", "application/octet-stream", png, ok),
        # query strings
        Hostile("unknown_model", "/segment", "image/jpeg", jpeg, 404, "model_not_found", {"model": "../../etc/passwd"}),
        Hostile("unknown_param", "/segment", "image/jpeg", jpeg, 400, "bad_parameter", {"bogus": "1"}),
        Hostile("bad_format", "/segment", "image/jpeg", jpeg, 400, "bad_parameter", {"format": "xml"}),
        Hostile("timeout_zero", "/segment", "image/jpeg", jpeg, 400, "bad_parameter", {"timeout_ms": "0"}),
        Hostile("timeout_huge", "/segment", "image/jpeg", jpeg, 400, "bad_parameter", {"timeout_ms": "9" * 40}),
        Hostile("timeout_nan", "/segment", "image/jpeg", jpeg, 400, "bad_parameter", {"timeout_ms": "nan"}),
        Hostile("instance_option_on_semantic", "/segment", "image/jpeg", jpeg, 400, "bad_parameter", {"score_threshold": "0.5"}),
        # multipart
        Hostile("multipart_no_boundary", "/segment", "multipart/form-data", multipart([("image", "a.jpg", "image/jpeg", jpeg)]),
                (400, 422)),
        Hostile("multipart_wrong_boundary", "/segment", multipart_type("other"),
                multipart([("image", "a.jpg", "image/jpeg", jpeg)]), (400, 422)),
        Hostile("multipart_wrong_field", "/segment", multipart_type(), multipart([("file", "a.jpg", "image/jpeg", jpeg)]), 400,
                "bad_parameter"),
        Hostile("multipart_not_a_file", "/segment", multipart_type(), multipart([("image", None, None, jpeg)]), 400,
                "bad_parameter"),
        Hostile("multipart_empty_file", "/segment", multipart_type(), multipart([("image", "a.jpg", "image/jpeg", b"")]), bad,
                "undecodable_input"),
        Hostile("multipart_garbage_file", "/segment", multipart_type(), multipart([("image", "a.jpg", "image/jpeg", b"x" * 99)]),
                bad, "undecodable_input"),
        Hostile("multipart_unterminated", "/segment", multipart_type(),
                multipart([("image", "a.jpg", "image/jpeg", jpeg)])[:-25], (400, 422)),
        Hostile("multipart_many_files", "/segment", multipart_type(), multipart([("image", f"{i}.jpg", "image/jpeg", jpeg)
                                                                                   for i in range(200)]), bad, "undecodable_input"),
        Hostile("multipart_many_fields", "/segment", multipart_type(), multipart([(f"f{i}", None, None, b"v") for i in range(500)]),
                bad, "undecodable_input"),
        Hostile("multipart_huge_header", "/segment", multipart_type(),
                multipart([("image" + "x" * 200_000, "a.jpg", "image/jpeg", jpeg)]), (400, 413, 422)),
        Hostile("multipart_ok", "/segment", multipart_type(), multipart([("image", "a.jpg", "image/jpeg", jpeg)]), ok),
        # video
        Hostile("video_empty", "/segment/video", "video/mp4", b"", bad, "undecodable_input"),
        Hostile("video_garbage", "/segment/video", "video/webm", b"\x1aE\xdf\xa3garbage" * 40, bad, "undecodable_input"),
        Hostile("video_text_plain", "/segment/video", "text/plain", mp4, 415, "unsupported_media_type"),
        Hostile("video_image_type", "/segment/video", "image/jpeg", jpeg, 415, "unsupported_media_type"),
        Hostile("video_too_long", "/segment/video", "video/mp4", too_long, 413, "payload_too_large"),
        *[Hostile(f"mp4_cut_{keep}", "/segment/video", "video/mp4", mp4[:len(mp4) * keep // 100], bad, "undecodable_input")
          for keep in (10, 50, 95)],
        Hostile("mp4_too_many_frames", "/segment/video", "video/mp4",
                video_bytes("libx264", "mp4", frames=limits["video_max_frames"] + 1), bad, "too_many_frames"),
        Hostile("mjpeg_65535x65535", "/segment/video", "video/x-matroska", mjpeg_video_declaring(65535, 65535), bad),
        Hostile("mjpeg_8000x8000", "/segment/video", "video/x-matroska", mjpeg_video_declaring(8000, 8000), bad),
        Hostile("video_frame_stride_huge", "/segment/video", "video/mp4", mp4, ok, None, {"frame_stride": "1000"}),
        Hostile("video_sequence_without_stream", "/segment/video", "video/mp4", mp4, 400, "bad_parameter", {"sequence": "0"}),
        Hostile("video_stream_id_hostile", "/segment/video", "video/mp4", mp4, 400, "bad_parameter",
                {"stream_id": "../" * 50, "sequence": "0"}),
        Hostile("video_unknown_param", "/segment/video", "video/mp4", mp4, 400, "bad_parameter", {"bogus": "1"}),
        Hostile("video_frames_differ_in_size", "/segment/video", multipart_type(),
                multipart([("frame", "0.png", "image/png", png), ("frame", "1.png", "image/png", image_bytes("PNG", 13, 16))]), bad,
                "undecodable_input"),
        Hostile("video_no_frames", "/segment/video", multipart_type(), multipart([("image", "0.png", "image/png", png)]), 400,
                "bad_parameter"),
        Hostile("video_too_many_frame_parts", "/segment/video", multipart_type(),
                multipart([("frame", f"{i}.png", "image/png", png) for i in range(limits["video_max_frames"] + 1)]), bad),
        Hostile("video_frame_claims_65535x65535", "/segment/video", multipart_type(),
                multipart([("frame", "0.png", "image/png", png_declaring(65535, 65535))]), bad, "too_many_pixels"),
        Hostile("video_multipart_ok", "/segment/video", multipart_type(),
                multipart([("frame", f"{i}.png", "image/png", png) for i in range(3)]), ok),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "duplicate corpus names"
    return cases


def write(directory: Path, limits: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    index = []
    for case in corpus(limits):
        (directory / f"{case.name}.bin").write_bytes(case.body)
        index.append({"file": f"{case.name}.bin", "route": case.route, "content_type": case.content_type, "params": case.params,
                      "status": case.status, "code": case.code})
    (directory / "index.json").write_text(json.dumps({"limits": limits, "cases": index}, indent=1) + "\n")


DEFAULT_LIMITS = {"max_body_bytes": 20 * 1024 * 1024, "max_image_pixels": 40_000_000, "video_max_frames": 64}

if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "out/hostile"), DEFAULT_LIMITS)
