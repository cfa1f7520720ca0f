"""The JSON answer to one segmented image, shared by every transport so HTTP `/segment` and
gRPC `MASKS_JSON` carry byte-for-byte the same document."""

from __future__ import annotations

import json

from segserve.pipelines.base import ImageResult, Pipeline


def fixed_width_ms(seconds: float) -> str:
    """A JSON number padded with leading spaces to a constant width. Identical requests then
    get identical-length bodies, which plain `ab` (without -l) requires: it counts every body
    whose length differs from the first as a failed request."""
    return f"{min(seconds * 1000, 99_999_999.999):12.3f}"


def render_json(pipeline: Pipeline, result: ImageResult, total_s: float) -> bytes:
    config = pipeline.config
    body = {"model": config.name, "task": config.task.value, "width": result.width, "height": result.height}
    body.update(pipeline.response_fields())
    body.update(result.encoded.body)
    timing = result.timing
    encoded = json.dumps(body, separators=(",", ":"))
    encoded = (
        f'{encoded[:-1]},"timing_ms":{{"queue":{fixed_width_ms(timing.queue_s)},'
        f'"compute":{fixed_width_ms(timing.compute_s)},"total":{fixed_width_ms(total_s)}}}}}'
    )
    return encoded.encode()
