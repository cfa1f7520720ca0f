"""Access control (issue 13, finding 9): the optional API key on HTTP and gRPC, TLS on both,
/metrics on a separate plain port, where the docs live.

In process (tests/servers.py InProcessServer) wherever no socket is needed: the key on every
HTTP route, the docs' placement, the OpenAPI's security schemes, the metrics port (a real
socket, but one the app itself opens). Real processes for what only `segserve serve` does:
the CLI flags, gRPC (tritonclient, see tests/test_grpc.py), and TLS (uvicorn's and gRPC's).
Without a key everything stays open: the rest of the suite runs that way."""

from __future__ import annotations

import asyncio
import subprocess

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from segserve.config import Settings
from segserve.metrics import Metrics
from segserve.transport.access import ApiKey
from segserve.transport.http.access import ApiKeyMiddleware
from tests.conftest import SEMANTIC, make_image
from tests.servers import ServerError, ServerProcess, app_server, free_port

KEY = "s3cr3t-key_0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}
X_API_KEY = {"X-API-Key": KEY}
JPEG = {"Content-Type": "image/jpeg"}


def assert_unauthorized(r: httpx.Response, invalid: bool = False) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.json()["error"]["message"]
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) == invalid
    assert r.headers["X-Request-ID"]


def metric(text: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def keyed(semantic_repo):
    with app_server(semantic_repo, api_key=KEY) as server:
        yield server


# -- no key: as before -----------------------------------------------------------------------
def test_without_a_key_everything_is_open(server):
    assert server.client.get("/v1/models").status_code == 200
    assert server.client.get("/metrics").status_code == 200
    assert server.client.get("/docs").status_code == 200
    schema = server.client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert "401" not in schema["paths"]["/segment"]["post"]["responses"]


# -- the key on HTTP ---------------------------------------------------------------------------
PROTECTED = [
    ("POST", "/segment"),
    ("POST", "/segment/video"),
    ("GET", "/v1/models"),
    ("GET", f"/v1/models/{SEMANTIC}"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/route"),  # 401, not 404: nothing about the server without the key
]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_no_key_or_a_wrong_one_is_a_401(keyed, method, path):
    content = make_image(32, 32) if method == "POST" else None
    assert_unauthorized(keyed.client.request(method, path, content=content, headers=JPEG))
    for wrong in ({"Authorization": "Bearer nope"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": ""}):
        assert_unauthorized(keyed.client.request(method, path, content=content, headers={**JPEG, **wrong}), invalid=True)
    # another scheme, or none, is not a key: as if none were sent
    for other in ({"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}, {"Authorization": f"Bearer{KEY}"}):
        assert_unauthorized(keyed.client.request(method, path, content=content, headers={**JPEG, **other}))


# Header values with surrounding whitespace reach the app as sent only through the in-process
# transport: httpx refuses to send them on a socket, and an HTTP/1.1 parser (uvicorn's h11) strips it.
AS_SENT_IN_PROCESS_ONLY = "a header value with surrounding whitespace: only the in-process transport sends it as it is"


@pytest.mark.single_process(AS_SENT_IN_PROCESS_ONLY)
@pytest.mark.parametrize("method,path", PROTECTED)
def test_an_empty_bearer_is_a_wrong_key(keyed, method, path):
    content = make_image(32, 32) if method == "POST" else None
    assert_unauthorized(keyed.client.request(method, path, content=content, headers={**JPEG, "Authorization": "Bearer "}), invalid=True)


def test_a_401_carries_the_request_id_and_is_counted(keyed):
    before = metric(keyed.client.get("/metrics", headers=BEARER).text, "segserve_unauthorized_total", protocol="http")
    r = keyed.client.get("/v1/models", headers={"X-Request-ID": "who-is-this"})
    assert_unauthorized(r)
    assert r.headers["X-Request-ID"] == "who-is-this"
    after = metric(keyed.client.get("/metrics", headers=BEARER).text, "segserve_unauthorized_total", protocol="http")
    assert after == before + 1


@pytest.mark.parametrize("headers", [BEARER, X_API_KEY, {"authorization": f"bearer {KEY}"},
                                     pytest.param({"X-API-Key": f" {KEY} "}, marks=pytest.mark.single_process(AS_SENT_IN_PROCESS_ONLY))],
                         ids=["bearer", "x-api-key", "lower-case", "padded"])
def test_either_header_form_is_let_through(keyed, headers):
    r = keyed.client.post("/segment", content=make_image(32, 32), headers={**JPEG, **headers})
    assert r.status_code == 200, r.text
    assert keyed.client.get("/v1/models", headers=headers).status_code == 200
    assert keyed.client.get(f"/v1/models/{SEMANTIC}", headers=headers).status_code == 200
    assert keyed.client.get("/v1/models/nope", headers=headers).status_code == 404  # past the key: the route's own answer
    assert keyed.client.get("/metrics", headers=headers).status_code == 200
    assert keyed.client.get("/docs", headers=headers).status_code == 200


def test_a_wrong_key_beside_the_right_one_does_not_lock_out(keyed):
    r = keyed.client.get("/v1/models", headers={"Authorization": "Bearer stale", "X-API-Key": KEY})
    assert r.status_code == 200


def test_video_needs_the_key(keyed):
    frames = [("frame", (f"{i}.jpg", make_image(32, 32, seed=i), "image/jpeg")) for i in range(2)]
    assert_unauthorized(keyed.client.post("/segment/video", params={"model": SEMANTIC}, files=frames))
    r = keyed.client.post("/segment/video", params={"model": SEMANTIC}, files=frames, headers=X_API_KEY)
    assert r.status_code == 200, r.text
    assert len(r.json()["frames"]) == 2


def test_probes_stay_open(keyed):
    assert keyed.client.get("/healthz").status_code == 200
    assert keyed.client.get("/readyz").status_code == 200
    assert keyed.client.get("/healthz", headers={"X-API-Key": "wrong"}).status_code == 200
    assert keyed.client.get("/v2/health/live").status_code == 200
    assert keyed.client.get("/v2/health/ready").status_code == 200


def test_kserve_v2_needs_the_key_and_refuses_in_its_own_error_form(keyed):
    """/v2 errors are v2's {"error": "<message>"}, the 401 of the middleware included."""
    r = keyed.client.get(f"/v2/models/{SEMANTIC}")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["error"].startswith("unauthorized: ")
    assert keyed.client.get(f"/v2/models/{SEMANTIC}", headers=X_API_KEY).json()["name"] == SEMANTIC
    assert keyed.client.get(f"/v2/models/{SEMANTIC}/ready", headers=BEARER).status_code == 200


def test_the_openapi_documents_the_key(keyed):
    schema = keyed.client.get("/openapi.json", headers=BEARER).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    segment = schema["paths"]["/segment"]["post"]
    assert segment["security"] == [{"bearer": []}, {"apiKey": []}]
    assert segment["responses"]["401"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "401" in schema["paths"]["/segment/video"]["post"]["responses"]
    for probe in ("/healthz", "/readyz"):
        assert "security" not in schema["paths"][probe]["get"]
        assert "401" not in schema["paths"][probe]["get"]["responses"]


def test_a_refusal_does_not_read_the_body():
    """The middleware answers from the headers alone: an unauthenticated upload is never received."""
    async def app(scope, receive, send):
        raise AssertionError("the app ran")

    async def receive():
        raise AssertionError("the body was read")

    sent = []

    async def send(message):
        sent.append(message)

    middleware = ApiKeyMiddleware(app, ApiKey(KEY), frozenset(), Metrics())
    scope = {"type": "http", "method": "POST", "path": "/segment", "headers": [(b"content-length", b"20000000")]}
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 401
    assert (b"www-authenticate", b'Bearer realm="segserve"') in sent[0]["headers"]


# -- where /metrics and the docs live ---------------------------------------------------------
def test_public_docs_with_a_key(semantic_repo):
    with app_server(semantic_repo, api_key=KEY, docs="public", warmup=False) as server:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert server.client.get(path).status_code == 200, path
        assert_unauthorized(server.client.get("/v1/models"))
        assert_unauthorized(server.client.get("/metrics"))


def test_metrics_and_docs_on_a_separate_plain_port(semantic_repo):
    port = free_port()
    with app_server(semantic_repo, api_key=KEY, metrics_port=port, metrics_host="127.0.0.1", docs="metrics_port",
                         warmup=False) as server:
        assert server.client.post("/segment", content=make_image(32, 32), headers={**JPEG, **BEARER}).status_code == 200
        plain = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{plain}/metrics", timeout=10)  # no key, no TLS
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        assert metric(r.text, "segserve_requests_total", model=SEMANTIC, route="segment", status="200") == 1
        assert "openapi" in httpx.get(f"{plain}/openapi.json", timeout=10).json()
        assert httpx.get(f"{plain}/docs", timeout=10).status_code == 200
        assert httpx.get(f"{plain}/v1/models", timeout=10).status_code == 404  # the API is not there
        # and off the main port, key or not
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert server.client.get(path, headers=BEARER).status_code == 404, path
            assert_unauthorized(server.client.get(path))
    with pytest.raises(httpx.TransportError):  # closed with the server
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_the_metrics_port_taken_fails_the_start(semantic_repo):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        # in process the bind's OSError itself; a server process exits and its log says why
        with pytest.raises((OSError, ServerError), match="(?i)address already in use"):
            app_server(semantic_repo, metrics_port=port, metrics_host="127.0.0.1", warmup=False).start()


def test_docs_off(semantic_repo):
    with app_server(semantic_repo, docs="off", warmup=False) as server:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert server.client.get(path).status_code == 404, path
        assert server.client.get("/metrics").status_code == 200


# -- settings ----------------------------------------------------------------------------------
def test_the_key_from_a_file(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")  # as `kubectl create secret --from-file` or an editor leaves it
    settings = Settings(api_key_file=path)
    assert settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings)


@pytest.mark.parametrize("fields,message", [
    ({"api_key": ""}, "empty"),
    ({"api_key": "two words"}, "visible ASCII"),
    ({"api_key": "clé"}, "visible ASCII"),
    ({"api_key_file": "/no/such/file"}, "cannot read"),
    ({"api_key": KEY, "api_key_file": __file__}, "not both"),
    ({"tls_cert_file": __file__}, "set both or neither"),
    ({"docs": "metrics_port"}, "needs metrics_port"),
    ({"metrics_port": 8000}, "already the HTTP or gRPC port"),
])
def test_settings_refuse(fields, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)


# -- real processes: the CLI, gRPC, TLS --------------------------------------------------------
def triton_status(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return exc.status()
    return "OK"


def image_input(data: bytes) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=object))
    return tensor


def check_grpc(client: triton.InferenceServerClient) -> None:
    image = make_image(32, 32)
    # the probes are open
    assert client.is_server_live()
    assert client.is_server_ready()
    # the rest needs the key
    assert triton_status(lambda: client.infer(SEMANTIC, [image_input(image)])) == "StatusCode.UNAUTHENTICATED"
    assert triton_status(lambda: client.infer(SEMANTIC, [image_input(image)], headers={"x-api-key": "wrong"})) \
        == "StatusCode.UNAUTHENTICATED"
    assert triton_status(lambda: client.get_model_metadata(SEMANTIC)) == "StatusCode.UNAUTHENTICATED"
    assert triton_status(lambda: client.is_model_ready(SEMANTIC)) == "StatusCode.UNAUTHENTICATED"
    try:
        client.infer(SEMANTIC, [image_input(image)])
    except InferenceServerException as exc:
        assert "unauthorized" in exc.message()
    for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
        result = client.infer(SEMANTIC, [image_input(image)], headers=headers)
        assert len(result.as_numpy("MASKS_JSON")) == 1
        assert client.is_model_ready(SEMANTIC, headers=headers)
        assert client.get_model_metadata(SEMANTIC, headers=headers).name == SEMANTIC


def test_grpc_and_http_with_a_key_and_a_metrics_port(semantic_repo, tmp_path):
    metrics_port = free_port()
    with ServerProcess(semantic_repo, tmp_path / "server.log", grpc=True, env={"SEGSERVE_API_KEY": KEY},
                       args=["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"]) as server:
        assert_unauthorized(server.client.get("/v1/models"))
        assert server.client.get("/v1/models", headers=X_API_KEY).status_code == 200
        with triton.InferenceServerClient(server.grpc_url) as client:
            check_grpc(client)
        # an unknown method is refused like a known one: UNAUTHENTICATED, not UNIMPLEMENTED
        with grpc.insecure_channel(server.grpc_url) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")(b"")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert metric(text, "segserve_unauthorized_total", protocol="grpc") >= 5
        assert metric(text, "segserve_unauthorized_total", protocol="http") == 1
        assert metric(text, "segserve_requests_total", route="grpc", status="OK") == 2
        assert server.client.get("/metrics", headers=X_API_KEY).status_code == 404
    log = server.log()
    assert "access: API key required, plain text, /metrics on :%d" % metrics_port in log
    assert KEY not in log


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost (openssl: `cryptography` is not
    in the environment); it is its own CA."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_tls_on_http_and_grpc(semantic_repo, tmp_path, certificate):
    cert, key = certificate
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    args = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--api-key-file", str(key_file)]
    with ServerProcess(semantic_repo, tmp_path / "server.log", grpc=True, args=args, tls_ca=cert) as server:
        assert server.url.startswith("https://")
        r = server.client.post("/segment", content=make_image(32, 32), headers={**JPEG, **BEARER})
        assert r.status_code == 200, r.text
        assert_unauthorized(server.client.get("/v1/models"))
        with pytest.raises(httpx.ConnectError):  # the certificate is checked: not trusted without the CA
            httpx.get(f"{server.url}/healthz", timeout=10)
        with pytest.raises(httpx.TransportError):  # no plain text on the TLS port
            httpx.get(server.url.replace("https://", "http://") + "/healthz", timeout=10)
        with triton.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(cert)) as client:
            check_grpc(client)
        with triton.InferenceServerClient(server.grpc_url) as plain:  # a plain-text client gets nowhere
            assert triton_status(plain.is_server_live) == "StatusCode.UNAVAILABLE"
    assert "access: API key required, TLS" in server.log()
