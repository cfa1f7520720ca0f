"""The API key check that HTTP (transport/http/access.py) and gRPC (transport/grpc/access.py)
share: a request carries the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
(gRPC: the same names as metadata), compared in constant time.

Both sides are hashed before ``hmac.compare_digest``, so the comparison takes the same time
whatever the length of what the client sent, and neither the key's length nor a prefix of it
can be timed out of the server."""

from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

from segserve.config import Settings
from segserve.errors import Unauthorized

AUTHORIZATION = "authorization"
X_API_KEY = "x-api-key"
# RFC 6750 section 3: the challenge a 401 carries (HTTP); the realm names the server.
CHALLENGE = 'Bearer realm="segserve"'
CHALLENGE_INVALID = 'Bearer realm="segserve", error="invalid_token"'


class MissingKey(Unauthorized):
    """No key was sent (a 401's challenge then carries no error, RFC 6750 section 3.1)."""


class InvalidKey(Unauthorized):
    """A key was sent and none matched."""


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKey:
    """The configured key; ``check(headers)`` raises ``Unauthorized`` unless one matches."""

    def __init__(self, key: str):
        self._digest = _digest(key.encode("ascii"))

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiKey | None":
        return cls(settings.api_key.get_secret_value()) if settings.api_key is not None else None

    def matches(self, candidate: bytes) -> bool:
        return hmac.compare_digest(_digest(candidate), self._digest)

    def check(self, headers: Iterable[tuple[str | bytes, str | bytes]]) -> None:
        """``headers``: (name, value) pairs, names in lower case (as ASGI and gRPC give them)."""
        presented = False
        for name, value in headers:
            name = name.decode("latin-1") if isinstance(name, bytes) else name
            if name not in (AUTHORIZATION, X_API_KEY):
                continue
            raw = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
            candidate = raw.strip()
            if name == AUTHORIZATION:
                scheme, _, credentials = candidate.partition(b" ")
                if scheme.lower() != b"bearer":
                    continue  # Basic and others: not ours, as if absent
                candidate = credentials.strip()
            presented = True
            if self.matches(candidate):
                return
        if presented:
            raise InvalidKey("invalid API key")
        raise MissingKey("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")
