"""SIGTERM under heavy load: does every request the server took get an answer?

``python -m segserve_loadtest.drain [--concurrency 256] [--before-s 5]`` starts `segserve serve`
on the bundled default model, keeps ``--concurrency`` keep-alive connections busy (each sends
the next POST /segment as soon as the last is answered), sends SIGTERM after ``--before-s``,
and goes on until the server has exited. Every request is classified:

* answered: a whole HTTP answer (200, 503 ...), counted by status;
* refused: the connection could not be opened (the server had stopped listening) -- never sent;
* lost: sent, then the connection broke before a whole answer came -- what must stay 0.

A keep-alive connection the server closes between two requests is the one case a client
cannot tell from a loss: the request written into it counts as lost too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from segserve_loadtest.ab import segment_url
from segserve_loadtest.payloads import default_images
from segserve_loadtest.server import SegserveProcess
from segserve_loadtest.soak import MODEL, back_to_back, ensure_model, post_bytes


async def drive(url: str, concurrency: int, before_s: float, process, grace_s: float) -> dict:
    parts = urlsplit(url)
    raw = post_bytes(url, default_images()[0])
    outcomes: Counter = Counter()
    server_gone = asyncio.Event()

    def refused() -> bool:  # before the SIGTERM a refusal is a hiccup; after it, the server is gone
        outcomes["refused"] += 1
        return not server_gone.is_set()

    tasks = [asyncio.ensure_future(back_to_back(
        parts.hostname, parts.port, raw, going=lambda: True,
        answered=lambda status, _headers, _sent: outcomes.update([str(status)]),
        refused=refused, lost=lambda: outcomes.update(["lost"]))) for _ in range(concurrency)]
    await asyncio.sleep(before_s)
    before = dict(outcomes)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    while process.poll() is None and time.monotonic() - signalled < grace_s:
        await asyncio.sleep(0.05)
    exit_s = time.monotonic() - signalled
    server_gone.set()
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    return {"before_sigterm": before, "total": dict(outcomes), "exit_s": round(exit_s, 2), "exit_code": process.poll()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--before-s", type=float, default=5.0, help="load before the SIGTERM")
    parser.add_argument("--grace-s", type=float, default=60.0, help="how long the server may take to exit")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    repository = Path(args.repository)
    ensure_model(repository)
    log = Path(tempfile.mkdtemp(prefix="segserve-drain-")) / "server.log"
    server = SegserveProcess(repository, log, models=[MODEL]).start()
    try:
        result = asyncio.run(drive(segment_url(server.url, MODEL), args.concurrency, args.before_s, server.process,
                                   args.grace_s))
    finally:
        server.stop()
    result.update(concurrency=args.concurrency, before_s=args.before_s, server_log=str(log))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    lost = result["total"].get("lost", 0)
    print(f"{'OK' if lost == 0 else 'FAILED'}: {lost} request(s) sent and never answered across the SIGTERM", file=sys.stderr)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
