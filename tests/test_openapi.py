"""schemathesis against the app's own OpenAPI: what /openapi.json declares is what the server does.

Every operation is driven with schema-conforming (positive) and schema-violating (negative)
cases, bounded and derandomized (every run sends the same ones), through the real app in
this process (tests/servers.py: lifespan, engines and batchers), and each answer is checked:
no 5xx but the documented 503/504, a documented status, Content-Type, body schema and
headers (Retry-After on 503), 405 with Allow for a method an operation lacks, invalid input
refused with a 4xx, and valid parameters never refused as a bad parameter (400) -- but for
the two rules an OpenAPI document cannot state (UNDECLARABLE).

schemathesis' own ASGI transport is not used: it enters the app's lifespan (the model loads)
for every call. Cases are prepared as its requests transport prepares them and sent through
the in-process server's httpx client instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi import checks as oa

from segserve.codecs.video import VIDEO_TYPES
from segserve.config import Settings
from segserve.server import create_app
from tests.conftest import INSTANCE_SPLIT
from tests.servers import BASE_URL, app_server

# The OpenAPI document does not depend on the repository: an app that is never started gives it.
# The KServe v2 routes (/v2/...) answer errors in the v2 REST spec's shape ({"error": "..."}), which
# tritonclient parses, not segserve's ErrorResponse: tests/test_kserve_http.py drives them with
# tritonclient and checks every status; here only segserve's own API.
V2 = "^/v2"
schema = schemathesis.openapi.from_dict(create_app(Settings(model_repository=Path("unused"), grpc_port=None)).openapi()).exclude(
    path_regex=V2
)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], deterministic=True)
# A video body is bytes as an image body is (bytes no decoder accepts are a 422 like any other).
schemathesis.serializer.alias(sorted(VIDEO_TYPES), "application/octet-stream")

CHECKS = [
    oa.status_code_conformance,
    oa.content_type_conformance,
    oa.response_schema_conformance,
    oa.response_headers_conformance,
    oa.negative_data_rejection,
    oa.unsupported_method,
    oa.allow_header_conformance,
]
# What OpenAPI cannot declare: instance-model options sent to a semantic model (and refine to an
# instance model), refine=crf on a model exported without probabilities, and a parameter that
# needs another one.
UNDECLARABLE = ("unknown query parameter(s) for a semantic model", "unknown query parameter(s) for a instance model",
                "refine=crf: ", "sequence needs a stream_id")
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def send(server, case) -> requests.Response:
    """The case as schemathesis' requests transport would send it, through the in-process app."""
    prepared = requests.Request(**case.as_transport_kwargs(base_url=BASE_URL)).prepare()
    return server.client.request(prepared.method, prepared.url, headers=dict(prepared.headers), content=prepared.body)


def check(server, case) -> None:
    response = send(server, case)
    what = f"{case.method} {case.formatted_path} {case.query} ({case.media_type}): {response.status_code} {response.text[:300]}"
    # 503 (at capacity) and 504 (e.g. timeout_ms=1) are documented answers; any other 5xx is a bug
    assert response.status_code < 500 or response.status_code in (503, 504), what
    if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code == 400:
        assert response.json()["error"]["message"].startswith(UNDECLARABLE), f"valid by the OpenAPI, refused: {what}"
    case.validate_response(response, checks=CHECKS)


@schema.parametrize()
@FUZZ
def test_the_server_does_what_its_openapi_says(case, server):
    check(server, case)


@pytest.fixture(scope="module")
def instance_server(instance_repo):
    with app_server(instance_repo, models=[INSTANCE_SPLIT]) as server:
        yield server


@schema.include(path_regex="^/segment").parametrize()
@settings(FUZZ, max_examples=10)
def test_an_instance_model_does_what_the_openapi_says(case, instance_server):
    """The instance options (score_threshold, max_instances, mask_threshold) and InstanceResponse."""
    check(instance_server, case)


def test_the_openapi_names_no_error_shape_the_server_never_sends():
    """Every validation error is a 400 ErrorResponse: FastAPI's default 422 HTTPValidationError is not documented."""
    for path, operations in schema.raw_schema["paths"].items():
        if re.match(V2, path):
            continue
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                refs = str(response.get("content", {}))
                assert "HTTPValidationError" not in refs, f"{method} {path} {status}: FastAPI's 422 shape"
                assert status == "200" or "ErrorResponse" in refs, f"{method} {path} {status}: {refs}"
                if status == "503":
                    assert response["headers"]["Retry-After"]["required"], f"{method} {path}: 503 without Retry-After"
