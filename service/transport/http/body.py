"""Request bodies: size limit while streaming, content types, multipart image field."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from segserve.codecs.image import IMAGE_TYPES
from segserve.errors import (
    BadParameter,
    DeadlineExceeded,
    PayloadTooLarge,
    UndecodableInput,
    UnsupportedMediaType,
)

RAW_IMAGE_TYPES = frozenset(IMAGE_TYPES) | {"application/octet-stream"}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_limited(request: Request, limit: int, deadline: float) -> bytes:
    """The whole body, at most ``limit`` bytes, by the request's ``deadline`` (monotonic): a
    client that sends too slowly gets a 504 instead of holding the request forever."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        raise DeadlineExceeded("the request body did not arrive within the deadline") from None


async def _replay(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def multipart_files(request: Request, body: bytes, field: str, max_files: int = 16) -> list[tuple[bytes, str]]:
    """The bytes and declared content type of every file part named ``field``, in body order."""
    parser = MultiPartParser(request.headers, _replay(body), max_files=max_files, max_fields=64)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UndecodableInput(f"malformed multipart body: {exc.message}") from exc
    try:
        return [(await part.read(), (part.content_type or "").lower()) for part in form.getlist(field) if isinstance(part, UploadFile)]
    finally:
        await form.close()


async def multipart_file(request: Request, body: bytes, field: str) -> tuple[bytes, str]:
    """The bytes and declared content type of the file part ``field`` (the last one if repeated)."""
    parts = await multipart_files(request, body, field)
    if not parts:
        raise BadParameter(f"multipart body needs a file field {field!r}")
    return parts[-1]


async def read_image(request: Request, limit: int, deadline: float) -> bytes:
    """The image bytes of a raw-image or multipart request."""
    kind = media_type(request)
    if kind not in RAW_IMAGE_TYPES and kind != "multipart/form-data":
        raise UnsupportedMediaType(
            f"content type {kind or '(none)'!r} not supported: send image/jpeg, image/png, image/webp "
            "or multipart/form-data with a file field 'image'"
        )
    body = await read_limited(request, limit, deadline)
    if kind == "multipart/form-data":
        data, _ = await multipart_file(request, body, "image")
        return data
    return body
