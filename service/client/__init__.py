"""segserve's Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), on httpx.

    from segserve.client import Client
    with Client("http://127.0.0.1:8000") as client:
        result = client.segment("photo.jpg")           # a path, bytes, a PIL image or a numpy array
        result.label_map                                # (h, w) class ids, decoded on demand
        Image.fromarray(result.overlay()).save("overlay.jpg")

It sits beside the server, not inside it: it may use the leaf codecs (the same overlay drawing as
``?format=overlay``), and no server module imports it (.importlinter). Reference: docs/client.md.
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401 - the client's one dependency beyond the runtime's
except ImportError as exc:  # pragma: no cover - a runtime-only install
    raise ImportError("segserve.client needs httpx: pip install 'segserve[client]'") from exc

from segserve.client.aio import AsyncClient
from segserve.client.errors import SegserveError
from segserve.client.result import Instance, Result, Segment, Timing
from segserve.client.retry import RetryPolicy
from segserve.client.sync import Client
from segserve.client.video import AsyncFrameStream, FrameStream, StreamStats, VideoFrame

__all__ = [
    "AsyncClient", "AsyncFrameStream", "Client", "FrameStream", "Instance", "Result", "RetryPolicy", "SegserveError",
    "Segment", "StreamStats", "Timing", "VideoFrame",
]
