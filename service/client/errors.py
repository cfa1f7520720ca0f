"""What a failed call raises: the server's answer ({"error": {"code", "message"}}) as an exception."""

from __future__ import annotations

import json


class SegserveError(Exception):
    """The server refused or failed the request (``status`` is the HTTP status), or could not be
    reached at all (``status`` None, ``code`` "connection_error"). ``midway``: the answer had
    begun (a streamed video chunk) when it failed, or was cut off ("connection_lost")."""

    def __init__(self, status: int | None, code: str, message: str, request_id: str | None = None, midway: bool = False):
        super().__init__(f"{status or 'no answer'} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.midway = midway

    @classmethod
    def from_response(cls, status: int, headers, body: bytes) -> "SegserveError":
        """segserve's error body when there is one; a proxy's or uvicorn's plain-text 503 otherwise."""
        try:
            error = json.loads(body)["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            code, message = f"http_{status}", body[:200].decode("utf-8", "replace").strip() or "(no body)"
        return cls(status, code, message, headers.get("x-request-id"))
