"""`segserve` command line: ``serve`` here; ``export`` and ``eval`` are the build side's
(``segserve_models.cli``), found through the ``segserve.commands`` entry points so the
server never imports the exporter."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import get_args

log = logging.getLogger("segserve")

COMMANDS = "segserve.commands"  # entry-point group: name -> add_command(subparsers)


def cmd_serve(args: argparse.Namespace) -> int:
    from segserve import logs
    from segserve.config import Settings

    overrides = {k: v for k, v in {
        "host": args.host,
        "port": args.port,
        "grpc_port": args.grpc_port,
        "model_repository": args.model_repository,
        "models": args.models.split(",") if args.models else None,
        "backend": args.backend,
        "data_path": args.data_path,
        "log_level": args.log_level,
        "workers": args.workers,
        "api_key_file": args.api_key_file,
        "tls_cert_file": args.tls_cert_file,
        "tls_key_file": args.tls_key_file,
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host,
        "docs": args.docs,
    }.items() if v is not None}
    settings = Settings(**overrides)
    if settings.worker_count() > 1:
        from segserve.supervisor import serve_workers

        logs.configure(settings.log_level, process_name=True)
        return serve_workers(settings)
    from segserve.server import create_app
    from segserve.transport.http.server import DrainingServer, uvicorn_config

    logs.configure(settings.log_level)
    app = create_app(settings)
    DrainingServer(uvicorn_config(settings, app), app.state.manager, settings.shutdown_delay_s).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from segserve.config import Settings

    parser = argparse.ArgumentParser(prog="segserve", description="Image and video segmentation serving")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (env SEGSERVE_HOST, default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (env SEGSERVE_PORT, default 8000)")
    serve.add_argument("--grpc-port", type=int, help="KServe v2 gRPC port (env SEGSERVE_GRPC_PORT, default 8001; 0 disables)")
    serve.add_argument("--model-repository", type=Path, help="model repository folder (env SEGSERVE_MODEL_REPOSITORY)")
    serve.add_argument("--models", help="comma-separated models to load (default: all)")
    serve.add_argument("--backend", choices=["onnxruntime", "torch"], help="force one backend for all models")
    serve.add_argument("--data-path", choices=get_args(Settings.model_fields["data_path"].annotation),
                       help="where semantic models' decode/letterbox/restore/RLE runs (env SEGSERVE_DATA_PATH, default auto: "
                            "the device when the torch backend serves the model on CUDA)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--workers", type=int,
                       help="HTTP worker processes beside one engine process (env SEGSERVE_WORKERS; default 1: a single "
                            "process; 0: one per CPU)")
    access = serve.add_argument_group("access control (docs/deployment.md, Security)")
    # No --api-key: a key on the command line is visible to every user of the host (ps, /proc).
    access.add_argument("--api-key-file", type=Path,
                        help="file holding the API key that HTTP and gRPC requests must carry "
                             "(env SEGSERVE_API_KEY_FILE; or the key itself in SEGSERVE_API_KEY)")
    access.add_argument("--tls-cert-file", type=Path, help="PEM certificate (chain): HTTPS and gRPC TLS (env SEGSERVE_TLS_CERT_FILE)")
    access.add_argument("--tls-key-file", type=Path, help="PEM private key of --tls-cert-file (env SEGSERVE_TLS_KEY_FILE)")
    access.add_argument("--metrics-port", type=int,
                        help="serve /metrics on this plain-HTTP port instead of the main one (env SEGSERVE_METRICS_PORT)")
    access.add_argument("--metrics-host", help="bind address of --metrics-port (env SEGSERVE_METRICS_HOST; default: --host)")
    access.add_argument("--docs", choices=get_args(Settings.model_fields["docs"].annotation),
                        help="where /docs and /openapi.json are served: behind the key, public, on the metrics port, "
                             "or nowhere (env SEGSERVE_DOCS)")
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
