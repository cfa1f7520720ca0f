"""The Kubernetes manifests (deploy/k8s/*.yaml), validated offline against the API schemas that
kubernetes-validate ships (no download, no cluster), plus what they must say about segserve:
HTTP and gRPC exposed, probes, a termination budget that covers the server's own drain, the
balancer running the same haproxy.cfg as compose and tests/test_affinity.py, an HPA on queue
metrics that the adapter rules provide."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"  # the oldest release with preStop `sleep` (beta, on by default)


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in documents(path)}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", [KUBERNETES_VERSION, kubernetes_validate.latest_version()])
def test_manifest_is_valid(path, version):
    docs = documents(path)
    assert docs
    for doc in docs:
        # strict: an unknown or misspelt field is an error, not silently dropped by the API server
        kubernetes_validate.validate(doc, version, strict=True)


def test_an_invalid_manifest_is_caught():
    doc = resources()[("Deployment", "segserve")]
    broken = {**doc, "spec": {**doc["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_segserve_exposes_http_and_grpc_with_probes_and_drain():
    res = resources()
    pod = res[("Deployment", "segserve")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001}
    for name in ("segserve", "segserve-replicas"):
        assert {p["targetPort"] for p in res[("Service", name)]["spec"]["ports"]} == {"http", "grpc"}
    assert res[("Service", "segserve-replicas")]["spec"]["clusterIP"] == "None"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = env_of(container)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    delay, drain = float(env["SEGSERVE_SHUTDOWN_DELAY_S"]), float(env["SEGSERVE_SHUTDOWN_DRAIN_S"])
    assert delay >= 2  # HAProxy's checks (inter 1 s, fall 2) see /readyz 503 before the server stops
    # preStop, then readiness off, then the HTTP drain, then gRPC's (each up to drain): all before SIGKILL
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + delay + 2 * drain + 5


def test_balancer_runs_the_kept_haproxy_cfg():
    res = resources()
    cfg = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    assert res[("ConfigMap", "segserve-haproxy")]["data"]["haproxy.cfg"] == cfg, \
        "deploy/k8s/balancer.yaml differs from deploy/haproxy/haproxy.cfg: run python deploy/k8s/sync_balancer.py"
    (container,) = res[("Deployment", "segserve-lb")]["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["SEGSERVE_DNS_NAME"].startswith("segserve-replicas.")  # the headless Service
    assert "SEGSERVE_DNS_NAME" in cfg and "hash-type consistent" in cfg and "balance leastconn" in cfg


def test_hpa_scales_on_the_adapter_metrics():
    res = resources()
    hpa = res[("HorizontalPodAutoscaler", "segserve")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "segserve"
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    rules = yaml.safe_load(res[("ConfigMap", "adapter-config")]["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    assert wanted == {"segserve_queue_depth", "segserve_queue_time_p90_seconds"} and wanted <= served
