"""JSON bodies at orjson's speed, byte for byte what ``json.dumps(obj, separators=(",", ":"))``
writes (ASCII, ``\\uXXXX`` escapes, Python's float repr).

orjson and the standard library agree on everything a segmentation answer holds (ints,
ASCII strings, lists, dicts, floats of 1e-4 and more), and differ only in ways its output
shows: non-ASCII text and DEL written raw, floats under 1e-4 in decimal or with a two-digit
exponent missing its zero (``5e-5`` for ``5e-05``), NaN and infinities as ``null``; and it
refuses what json.dumps converts (int keys, ints over 64 bits). Any of those -- or anything
that merely looks like one, e.g. a label with "e-" after a digit -- goes to json.dumps. A
caller whose document holds no floats says so (``floats=False``) and skips their checks.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A digit then "e-": a float's exponent as orjson writes it ("1e-7"; json: "1e-07"). Searched
# for only when "e-" occurs at all (a regular expression over a whole body is slow).
_EXPONENT = re.compile(rb"\de-")


def _may_differ(encoded: bytes, floats: bool) -> bool:
    """Whether orjson's ``encoded`` may not be json.dumps' bytes: bytes outside ASCII or DEL;
    with ``floats``, also small floats ("1e-7", "0.00005"; json: "1e-07", "5e-05") and null
    (NaN and infinities; also None, which json.dumps writes the same: a body holding None
    just takes the slow path). Single-byte searches first: RLE counts (ASCII 48-111) hold no
    "u", "." or "-"; the multi-byte searches cost ~1 ns a byte."""
    if not encoded.isascii() or b"\x7f" in encoded:
        return True
    return floats and (
        (b"u" in encoded and b"null" in encoded)
        or (b"." in encoded and b"0.0000" in encoded)
        or (b"-" in encoded and _EXPONENT.search(encoded) is not None)
    )


def dumps(obj: Any, *, floats: bool = True) -> bytes:
    """``json.dumps(obj, separators=(",", ":")).encode()``, the same bytes, mostly via orjson.
    ``floats=False`` promises ``obj`` holds no float and no None (only ints, strings, lists,
    dicts): the output then needs only the ASCII check."""
    try:
        encoded = orjson.dumps(obj)
    except TypeError:
        encoded = None
    if encoded is None or _may_differ(encoded, floats):
        return json.dumps(obj, separators=(",", ":")).encode()
    return encoded
