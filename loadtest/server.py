"""A segserve server in a subprocess on a free loopback port, for load runs and benchmarks that
have no URL to test (`make loadtest`, `make bench`): start, wait until ready, stop (SIGTERM,
then SIGKILL). The test suite has its own servers (tests/servers.py)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    # The port can in principle be taken between this close and the server's bind; the
    # server then fails to start and wait_ready says so with its log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SegserveProcess:
    """``with SegserveProcess(repo) as server: server.url ...``

    ``args`` are extra `segserve serve` flags, ``env`` extra environment (SEGSERVE_* settings).
    gRPC stays off unless ``args`` ask for a port: its fixed default (8001) would make two
    servers on one machine collide.
    """

    def __init__(self, model_repository: Path, log_path: Path | None = None, *, models: list[str] | None = None,
                 args: list[str] | None = None, env: dict[str, str] | None = None, ready_timeout_s: float = 180.0):
        self.model_repository = Path(model_repository)
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="segserve-")) / "server.log"
        self.models = models
        self.args = list(args or [])
        if "--grpc-port" not in self.args:
            self.args += ["--grpc-port", "0"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.verify: bool | ssl.SSLContext = True  # how the readiness probe checks a TLS certificate
        self.process: subprocess.Popen | None = None

    def start(self, ready_path: str = "/readyz") -> "SegserveProcess":
        """Start and wait until ``ready_path`` answers 200 (``/healthz`` to not wait for models)."""
        if not self.model_repository.is_dir():
            raise ServerError(
                f"model repository {self.model_repository} does not exist; export one first, e.g. "
                f"segserve export --model lraspp_mobilenet_v3_large --weights auto --repository {self.model_repository}"
            )
        command = [sys.executable, "-m", "segserve", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--model-repository", str(self.model_repository), *self.args]
        if self.models:
            command += ["--models", ",".join(self.models)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.wait_ready(ready_path)
        return self

    def wait_ready(self, ready_path: str = "/readyz") -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"segserve exited with {self.process.returncode} before ready:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"segserve not ready within {self.ready_timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 30.0) -> int | None:
        """Stop gracefully (the server drains its queues); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> "SegserveProcess":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
