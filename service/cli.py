"""`segserve` command line: ``serve`` here; ``export`` and ``eval`` are the build side's
(``segserve_models.cli``), found through the ``segserve.commands`` entry points so the
server never imports the exporter."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

log = logging.getLogger("segserve")

COMMANDS = "segserve.commands"  # entry-point group: name -> add_command(subparsers)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from segserve import logs
    from segserve.config import Settings
    from segserve.server import create_app
    from segserve.transport.http.keepalive import http_protocol
    from segserve.transport.http.server import DrainingServer

    overrides = {k: v for k, v in {
        "host": args.host,
        "port": args.port,
        "grpc_port": args.grpc_port,
        "model_repository": args.model_repository,
        "models": args.models.split(",") if args.models else None,
        "backend": args.backend,
        "log_level": args.log_level,
    }.items() if v is not None}
    settings = Settings(**overrides)
    logs.configure(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        http=http_protocol(settings.header_timeout_s, app.state.metrics.slow_clients.inc),
        access_log=False,
        timeout_keep_alive=30,
        # beyond this many open connections (or requests), new requests get an immediate 503
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) or None,
    )
    DrainingServer(config, app.state.manager, settings.shutdown_delay_s).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segserve", description="Image and video segmentation serving")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (env SEGSERVE_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (env SEGSERVE_PORT, default 8000)")
    serve.add_argument("--grpc-port", type=int, help="KServe v2 gRPC port (env SEGSERVE_GRPC_PORT, default 8001; 0 disables)")
    serve.add_argument("--model-repository", type=Path, help="model repository folder (env SEGSERVE_MODEL_REPOSITORY)")
    serve.add_argument("--models", help="comma-separated models to load (default: all)")
    serve.add_argument("--backend", choices=["onnxruntime", "torch"], help="force one backend for all models")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    for command in entry_points(group=COMMANDS):
        try:
            add_command = command.load()
        except ImportError as exc:  # the build side is not installed (runtime-only install)
            log.debug("segserve %s unavailable: %s", command.name, exc)
            continue
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
