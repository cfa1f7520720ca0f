"""The JSON answer to one segmented image, shared by every transport so HTTP `/segment` and
gRPC `MASKS_JSON` carry byte-for-byte the same document."""

from __future__ import annotations

import json

from segserve.pipelines.base import ImageResult


def fixed_width_ms(seconds: float) -> str:
    """A JSON number padded with leading spaces to a constant width. Identical requests then
    get identical-length bodies, which plain `ab` (without -l) requires: it counts every body
    whose length differs from the first as a failed request."""
    return f"{min(seconds * 1000, 99_999_999.999):12.3f}"


def render_json(model: str, task: str, classes: list[str], result: ImageResult, total_s: float) -> bytes:
    body = {"model": model, "task": task, "width": result.width, "height": result.height}
    if task == "semantic":
        body["classes"] = classes
    body.update(result.body)
    timing = result.timing
    encoded = json.dumps(body, separators=(",", ":"))
    encoded = (
        f'{encoded[:-1]},"timing_ms":{{"queue":{fixed_width_ms(timing.queue_s)},'
        f'"compute":{fixed_width_ms(timing.compute_s)},"total":{fixed_width_ms(total_s)}}}}}'
    )
    return encoded.encode()
