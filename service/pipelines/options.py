"""Request options arrive as text (HTTP query, gRPC parameters): one parser checks them alike."""

from __future__ import annotations

import math

from segserve.errors import BadParameter


def parse_number(options: dict[str, str], name: str, parse: type, low: float, high: float, default):
    """``options[name]`` as ``parse`` (int or float) within [low, high], or ``default`` when absent."""
    text = options.get(name)
    if text is None:
        return default
    try:
        value = parse(text)
    except ValueError:
        raise BadParameter(f"{name} must be a{'n integer' if parse is int else ' number'}, got {text!r}") from None
    if not (low <= value <= high) or (parse is float and not math.isfinite(value)):
        raise BadParameter(f"{name} must be in [{low}, {high}], got {text}")
    return value
