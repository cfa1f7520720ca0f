"""The standard load test, for ``make loadtest``: sweep a running server, or, without
--url, start one on a free port for the duration of the sweep.

    python -m segserve_loadtest.run --url http://127.0.0.1:8000 [--out out/loadtest] [sweep options]
    python -m segserve_loadtest.run [--model-repository model_repository] [--out out/loadtest] [sweep options]

Options not listed here go to ``python -m segserve_loadtest.sweep`` unchanged (--levels,
--duration, --open-loop-rates, --slo-p99-ms, --image, ...).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from segserve_loadtest import sweep
from segserve_loadtest.server import SegserveProcess, ServerError


def main(argv: list[str] | None = None) -> int:
    # allow_abbrev=False: else the sweep's --model would be taken for our --model-repository.
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.run", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--url", help="server to test; without it a server is started and stopped here")
    parser.add_argument("--model-repository", type=Path,
                        default=Path(os.environ.get("SEGSERVE_MODEL_REPOSITORY", "model_repository")),
                        help="for the started server (env SEGSERVE_MODEL_REPOSITORY, default model_repository)")
    parser.add_argument("--out", type=Path, default=Path("out/loadtest"), help="report directory")
    args, sweep_args = parser.parse_known_args(argv)
    sweep_args += ["--out", str(args.out)]

    if args.url:
        return sweep.main(["--url", args.url, *sweep_args])
    server = SegserveProcess(args.model_repository, args.out / "server.log")
    try:
        with server:
            print(f"started segserve at {server.url} (log: {server.log_path})", flush=True)
            return sweep.main(["--url", server.url, *sweep_args])
    except ServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # SIGTERM (a CI job's cancel, `kill`) unwinds like Ctrl-C does, so a started server is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
