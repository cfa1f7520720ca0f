"""Request options arrive as text (HTTP query, gRPC and KServe parameters): each is declared
once, with its bounds and its words for /docs, and one parser checks it on every transport."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from segserve.errors import BadParameter

# The longest deadline a request may ask for (timeout_ms on every transport).
MAX_TIMEOUT_MS = 600_000


def parse_number(options: Mapping[str, str], name: str, parse: type, low: float, high: float, default):
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


@dataclass(frozen=True)
class Option:
    """A text option: ``parse`` gives its value (or ``default`` when absent), ``openapi`` its
    query parameter for /docs."""

    name: str
    description: str

    def parse(self, options: Mapping[str, str], default: Any = None) -> Any:
        return options.get(self.name, default)

    def schema(self) -> dict:
        return {"type": "string"}

    def openapi(self, audience: str = "") -> dict:
        description = f"{audience}: {self.description}" if audience else self.description
        return {"name": self.name, "in": "query", "required": False, "description": description, "schema": self.schema()}


@dataclass(frozen=True)
class NumberOption(Option):
    kind: type = float  # int or float
    low: float = -math.inf
    high: float = math.inf

    def parse(self, options: Mapping[str, str], default: Any = None) -> Any:
        return parse_number(options, self.name, self.kind, self.low, self.high, default)

    def schema(self) -> dict:
        schema = {"type": "integer" if self.kind is int else "number"}
        if math.isfinite(self.low):
            schema["minimum"] = self.low
        if math.isfinite(self.high):
            schema["maximum"] = self.high
        return schema


@dataclass(frozen=True)
class ChoiceOption(Option):
    choices: tuple[str, ...] = ()

    def parse(self, options: Mapping[str, str], default: Any = None) -> Any:
        text = options.get(self.name)
        if text is None:
            return default
        if text not in self.choices:
            raise BadParameter(f"{self.name} must be one of {list(self.choices)}, got {text!r}")
        return text

    def schema(self) -> dict:
        return {"type": "string", "enum": list(self.choices)}


MODEL = Option("model", "model name; the server default when omitted")
TIMEOUT_MS = NumberOption("timeout_ms", "deadline for this request (default: server setting)", int, 1, MAX_TIMEOUT_MS)
