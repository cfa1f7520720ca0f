"""Logging with the request id on every line emitted while a request is handled."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import re

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# New ids: a random prefix per process and a counter, 32 hex digits like a uuid4's. Ids need
# to be unique, not unguessable, and uuid4 reads the OS's random source on every request.
_ID_PREFIX = os.urandom(10).hex()
_id_counter = itertools.count()


def request_id_from(*candidates: str | None) -> str:
    """The first client-sent id that is safe to log and echo, else a new one."""
    for candidate in candidates:
        if candidate and _SAFE_ID.match(candidate):
            return candidate
    return f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure(level: str = "info", process_name: bool = False) -> None:
    """``process_name``: every line says which process wrote it (``--workers N``: MainProcess is
    the engine process, segserve-worker-I the workers)."""
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    where = "%(processName)s " if process_name else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {where}[%(request_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
