"""Rewrite the haproxy.cfg ConfigMap in deploy/k8s/balancer.yaml from deploy/haproxy/haproxy.cfg,
the one configuration that compose, Kubernetes and tests/test_affinity.py run (the test suite
fails when they differ):  python deploy/k8s/sync_balancer.py"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "  haproxy.cfg: |\n", "---\n"

cfg = (HERE.parent / "haproxy" / "haproxy.cfg").read_text()
manifest = (HERE / "balancer.yaml").read_text()
head, rest = manifest.split(BEGIN, 1)
tail = rest[rest.index(END):]
body = "".join(f"    {line}" if line.strip() else "\n" for line in cfg.splitlines(keepends=True))
(HERE / "balancer.yaml").write_text(head + BEGIN + body + tail)
