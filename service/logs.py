"""Logging with the request id on every line emitted while a request is handled."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_from(*candidates: str | None) -> str:
    """The first client-sent id that is safe to log and echo, else a new one."""
    for candidate in candidates:
        if candidate and _SAFE_ID.match(candidate):
            return candidate
    return uuid.uuid4().hex


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
