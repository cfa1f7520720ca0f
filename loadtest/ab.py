"""ApacheBench wrapper: POST one image N times at concurrency C and turn ab's report into JSON.

    python -m segserve_loadtest.ab --url http://127.0.0.1:8000 --model lraspp_mobilenet_v3_large \
        -n 1000 -c 32 --image photo.jpg --json out.json

ab's traps:
* ``-l``: segmentation JSON differs in length per response; without it ab counts every
  response whose length differs from the first as a "Length" failure.
* "Failed requests" excludes HTTP errors: 4xx/5xx are only reported on a separate
  "Non-2xx responses" line, and that line is printed only when the count is non-zero.
* ``-k`` is HTTP/1.0 keep-alive, which uvicorn does not do: against segserve every ab
  request opens a connection ("Keep-Alive requests: 0"). Locust and the sweep reuse them.
* ab needs a path in the URL (``http://host:port`` alone is rejected) and writes its
  progress to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from segserve_loadtest.payloads import Payload, default_images, image_from_file

# "Label:   value [unit] ..." lines of ab's summary, mapped to (json key, type).
SCALAR_LINES: dict[str, tuple[str, type]] = {
    "Server Software": ("server_software", str),
    "Document Path": ("document_path", str),
    "Concurrency Level": ("concurrency", int),
    "Time taken for tests": ("time_taken_s", float),
    "Complete requests": ("complete_requests", int),
    "Failed requests": ("failed_requests", int),
    "Non-2xx responses": ("non_2xx_responses", int),
    "Write errors": ("write_errors", int),
    "Keep-Alive requests": ("keep_alive_requests", int),
    "Total transferred": ("total_transferred_bytes", int),
    "Total body sent": ("total_body_sent_bytes", int),
    "HTML transferred": ("html_transferred_bytes", int),
    "Requests per second": ("requests_per_second", float),
    "Transfer rate": ("transfer_rate_kb_s_received", float),
}
# Counters ab omits when they are zero; present them as 0 so consumers need no special case.
OMITTED_WHEN_ZERO = ("non_2xx_responses", "write_errors")

LINE = re.compile(r"^(?P<label>[A-Za-z0-9 -]+?):\s+(?P<value>\S+)")
FAILED_BREAKDOWN = re.compile(r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)")
TIME_PER_REQUEST = re.compile(r"^Time per request:\s+([\d.]+) \[ms\] \(mean(, across all concurrent requests)?\)")
CONNECTION_TIMES = re.compile(r"^(Connect|Processing|Waiting|Total):\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)")
PERCENTILE = re.compile(r"^\s*(\d+)%\s+(\d+)")
SENT_RATE = re.compile(r"^\s+([\d.]+) kb/s (sent|total)")


class AbError(RuntimeError):
    pass


def parse_ab_output(text: str) -> dict:
    """ab's stdout -> dict. Times in ab's own units (ms, s); percentiles keyed by percent."""
    result: dict = {"failed_breakdown": {}, "connection_times_ms": {}, "percentiles_ms": {}}
    for line in text.splitlines():
        if match := TIME_PER_REQUEST.match(line):
            key = "time_per_request_across_ms" if match.group(2) else "time_per_request_ms"
            result[key] = float(match.group(1))
        elif match := CONNECTION_TIMES.match(line):
            fields = ("min", "mean", "sd", "median", "max")
            values = [float(v) for v in match.groups()[1:]]
            result["connection_times_ms"][match.group(1).lower()] = dict(zip(fields, values))
        elif match := PERCENTILE.match(line):
            result["percentiles_ms"][int(match.group(1))] = float(match.group(2))
        elif match := FAILED_BREAKDOWN.search(line):
            names = ("connect", "receive", "length", "exceptions")
            result["failed_breakdown"] = dict(zip(names, (int(v) for v in match.groups())))
        elif match := SENT_RATE.match(line):
            result[f"transfer_rate_kb_s_{match.group(2)}"] = float(match.group(1))
        elif (match := LINE.match(line)) and match.group("label") in SCALAR_LINES:
            key, kind = SCALAR_LINES[match.group("label")]
            result[key] = kind(match.group("value"))
        elif line.startswith("Document Length:"):
            value = line.split(":", 1)[1].strip()
            result["document_length"] = "variable" if value == "Variable" else int(value.split()[0])
    if "complete_requests" not in result:
        raise AbError("no 'Complete requests' line: not an ab report")
    for key in OMITTED_WHEN_ZERO:
        result.setdefault(key, 0)
    return result


def segment_url(url: str, model: str | None) -> str:
    """``url`` as given when it has a path, else its /segment route; ``model`` joins the query."""
    parts = urlsplit(url)
    path = parts.path if parts.path not in ("", "/") else "/segment"
    query = "&".join(q for q in (parts.query, urlencode({"model": model}) if model else "") if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def ab_command(url: str, requests: int, concurrency: int, body_file: Path, content_type: str,
               *, keepalive: bool = True, time_limit_s: float | None = None,
               headers: dict[str, str] | None = None) -> list[str]:
    ab = shutil.which("ab")
    if ab is None:
        raise AbError("ab not found: install apache2-utils")
    # -t before -n: -t alone implies -n 50000, a later -n restores our count, so both bound the run.
    command = [ab] + (["-t", str(int(time_limit_s))] if time_limit_s else [])
    command += ["-n", str(requests), "-c", str(concurrency), "-l"] + (["-k"] if keepalive else [])
    for name, value in (headers or {}).items():  # e.g. KServe's Inference-Header-Content-Length
        command += ["-H", f"{name}: {value}"]
    return command + ["-p", str(body_file), "-T", content_type, url]


def run_ab(url: str, payload: Payload, requests: int, concurrency: int, *,
           keepalive: bool = True, time_limit_s: float | None = None, headers: dict[str, str] | None = None) -> dict:
    """Run ab once; returns the parsed report plus the command line. Raises AbError when ab
    aborts (connection refused, too many errors) instead of reporting."""
    with tempfile.TemporaryDirectory(prefix="segserve-ab-") as tmp:
        body_file = Path(tmp) / payload.name
        body_file.write_bytes(payload.body)
        command = ab_command(url, requests, concurrency, body_file, payload.content_type,
                             keepalive=keepalive, time_limit_s=time_limit_s, headers=headers)
        # ab's own -t is a soft bound (it waits for in-flight requests); this is the hard one.
        hard_limit = (time_limit_s or 600) + 60
        proc = subprocess.run(command, capture_output=True, text=True, timeout=hard_limit)
    if proc.returncode != 0:
        raise AbError(f"ab exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    result = parse_ab_output(proc.stdout)
    result["command"] = " ".join(command)  # the body path is a temporary file, gone by now
    result["payload"] = {"name": payload.name, "content_type": payload.content_type, "bytes": len(payload.body)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segserve_loadtest.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL or full endpoint URL")
    parser.add_argument("--model", help="model name (adds ?model=)")
    parser.add_argument("-n", "--requests", type=int, default=1000)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--image", type=Path, help="image to POST (default: a generated 640x480 JPEG)")
    parser.add_argument("--no-keepalive", action="store_true", help="new connection per request")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds; ab stops early past it")
    parser.add_argument("--json", type=Path, help="write the parsed report here")
    args = parser.parse_args(argv)

    payload = image_from_file(args.image) if args.image else default_images()[0]
    url = segment_url(args.url, args.model)
    try:
        result = run_ab(url, payload, args.requests, args.concurrency,
                        keepalive=not args.no_keepalive, time_limit_s=args.time_limit)
    except AbError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    if not args.no_keepalive and result["keep_alive_requests"] == 0:
        print("note: -k reused no connection: ab speaks HTTP/1.0, which the server (uvicorn does) closes",
              file=sys.stderr)
    # Non-zero when anything went wrong, so scripts can gate on it.
    return 1 if result["failed_requests"] or result["non_2xx_responses"] else 0


if __name__ == "__main__":
    sys.exit(main())
