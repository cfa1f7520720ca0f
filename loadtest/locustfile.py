"""Locust scenarios for segserve: semantic images, instance images and video chunks.

Web UI (http://localhost:8089):
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000
Headless, with reports and an SLO gate (exit code 1 when violated):
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s \
        --csv out/locust --html out/locust.html --slo-p99-ms 500 --slo-error-ratio 0.01
Step load (users grow by --step-users every --step-duration seconds up to -u):
    locust -f loadtest/locustfile.py --host ... --headless -u 32 --step-load --step-users 4 --step-duration 20

Every option also reads an environment variable (SEGSERVE_LT_<OPTION>, e.g.
SEGSERVE_LT_SEMANTIC_WEIGHT=3). Task weights are integers; 0 disables a task. The video
task is off by default, and when POST /segment/video does not exist on the server (404)
it is skipped, with a warning, instead of failing every request.
"""

from __future__ import annotations

import itertools
import logging
import math
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import gevent
import locust.stats
from locust import FastHttpUser, LoadTestShape, constant, events
from locust.runners import WorkerRunner

from segserve_loadtest.payloads import Payload, PayloadSet, load_payloads
from segserve_loadtest.slo import Slo, evaluate

log = logging.getLogger("segserve_loadtest")

# Locust reads these module globals when it builds the console table, CSV and HTML reports.
locust.stats.PERCENTILES_TO_REPORT = [0.50, 0.90, 0.95, 0.99, 0.999, 1.0]
locust.stats.PERCENTILES_TO_STATISTICS = [0.90, 0.95, 0.99, 0.999]
locust.stats.PERCENTILES_TO_CHART = [0.50, 0.95, 0.99]

PAYLOADS = PayloadSet(images=(), videos=())  # filled at test start from --payload-dir
SKIPPED_TASKS: dict[str, str] = {}  # task name -> why it was skipped


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    def option(name: str, **kwargs) -> None:
        env_var = "SEGSERVE_LT_" + name.lstrip("-").upper().replace("-", "_")
        parser.add_argument(name, env_var=env_var, **kwargs)

    option("--model", default="", help="semantic model name (default: the server's default model)")
    option("--instance-model", default="shapes_maskrcnn", help="instance model name")
    option("--video-model", default="", help="model for video chunks (default: --model)")
    option("--semantic-weight", type=int, default=1, help="weight of the semantic image task")
    option("--instance-weight", type=int, default=0, help="weight of the instance image task")
    option("--video-weight", type=int, default=0, help="weight of the video chunk task")
    option("--payload-dir", default="", help="directory of .jpg/.png/.webp/.mp4 bodies (default: generated)")
    option("--response-format", choices=["json", "png"], default="json", help="?format= of image requests")
    option("--step-load", action="store_true", default=False, help="use the step-load shape")
    option("--step-users", type=int, default=4, help="users added per step")
    option("--step-duration", type=float, default=30.0, help="seconds per step")
    option("--slo-p99-ms", type=float, default=None, help="fail (exit 1) when p99 exceeds this")
    option("--slo-error-ratio", type=float, default=None, help="fail (exit 1) when failures/requests exceed this")


class SegmentationUser(FastHttpUser):
    """A closed-loop client: sends the next request as soon as the previous one answers."""

    wait_time = constant(0)
    # FastHttpUser's pool is per user; one connection each mirrors a keep-alive client.
    concurrency = 1

    user_numbers = itertools.count()

    def on_start(self) -> None:
        # Users start at different payloads so that even two payloads mix sizes in flight.
        offset = next(self.user_numbers) % len(PAYLOADS.images)
        self.images = itertools.islice(itertools.cycle(PAYLOADS.images), offset, None)
        self.videos = itertools.cycle(PAYLOADS.videos)

    def post_image(self, model: str, label: str, expected_task: str) -> None:
        options = self.environment.parsed_options
        payload: Payload = next(self.images)
        query = urlencode({k: v for k, v in {"model": model, "format": options.response_format}.items() if v})
        with self.client.post(f"/segment?{query}", data=payload.body, headers={"Content-Type": payload.content_type},
                              name=f"/segment [{label}]", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif options.response_format == "json" and (task := answered_task(response)) != expected_task:
                response.failure(f"expected a {expected_task} answer, got task={task!r}")

    def semantic_image(self) -> None:
        self.post_image(self.environment.parsed_options.model, "semantic", "semantic")

    def instance_image(self) -> None:
        self.post_image(self.environment.parsed_options.instance_model, "instance", "instance")

    def video_chunk(self) -> None:
        options = self.environment.parsed_options
        payload: Payload = next(self.videos)
        query = urlencode({"model": model} if (model := options.video_model or options.model) else {})
        with self.client.post(f"/segment/video?{query}", data=payload.body,
                              headers={"Content-Type": payload.content_type}, name="/segment/video",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")


def answered_task(response) -> str | None:
    try:
        return response.json().get("task")
    except ValueError:  # not JSON: reported as a wrong answer, not as a crash of the task
        return None


def route_exists(host: str, path: str) -> bool:
    """A GET to a POST-only route answers 405 when it exists and 404 when it does not. An
    unreachable server counts as 'exists' so that the real requests report the failure."""
    try:
        urllib.request.urlopen(host.rstrip("/") + path, timeout=5).close()
    except urllib.error.HTTPError as err:
        return err.code != 404
    except (OSError, ValueError):  # unreachable, or no host set yet
        return True
    return True


def weighted_tasks(environment) -> list:
    options = environment.parsed_options
    weights = {
        SegmentationUser.semantic_image: options.semantic_weight,
        SegmentationUser.instance_image: options.instance_weight,
        SegmentationUser.video_chunk: options.video_weight,
    }
    if options.video_weight > 0 and not route_exists(environment.host or "", "/segment/video"):
        SKIPPED_TASKS["video"] = "POST /segment/video answered 404 (route not on this server)"
        log.warning("video task skipped: %s", SKIPPED_TASKS["video"])
        weights[SegmentationUser.video_chunk] = 0
    return [task for task, weight in weights.items() for _ in range(weight)]


@events.test_start.add_listener
def configure_run(environment, **_) -> None:
    """At test start rather than at init: the web UI may change the options in between."""
    global PAYLOADS
    options = environment.parsed_options
    payload_dir = Path(options.payload_dir) if options.payload_dir else None
    PAYLOADS = load_payloads(payload_dir, need_video=options.video_weight > 0)
    SKIPPED_TASKS.clear()
    tasks = weighted_tasks(environment)
    if not tasks:
        reason = "every task has weight 0" if not SKIPPED_TASKS else "every weighted task was skipped"
        log.warning("nothing to run: %s; stopping", reason)
        if not isinstance(environment.runner, WorkerRunner):
            gevent.spawn(environment.runner.quit)
        return
    SegmentationUser.tasks = tasks


@events.quitting.add_listener
def check_slo(environment, **_) -> None:
    """Turn the SLO into the process exit code (headless CI use). Workers do not judge: the
    master holds the aggregated statistics."""
    if isinstance(environment.runner, WorkerRunner):
        return
    options = environment.parsed_options
    slo = Slo(p99_ms=options.slo_p99_ms, error_ratio=options.slo_error_ratio)
    total = environment.stats.total
    for task, reason in SKIPPED_TASKS.items():
        log.info("skipped task %s: %s", task, reason)
    if not slo.enabled:
        return
    if total.num_requests == 0 and SKIPPED_TASKS:
        log.info("no requests sent: every weighted task was skipped; SLO not judged")
        environment.process_exit_code = 0
        return
    p99 = total.get_response_time_percentile(0.99) if total.num_requests else None
    verdict = evaluate(slo, total.num_requests, total.num_failures, p99)
    (log.info if verdict.passed else log.error)("%s (requests %d, failures %d, p99 %s ms)",
                                                verdict.describe(), total.num_requests, total.num_failures, p99)
    if not verdict.passed:
        environment.process_exit_code = 1
        return
    # A pass overrides locust's "exit 1 on any failure" only when the SLO allows errors;
    # exceptions raised in task code (a broken locustfile) keep their non-zero code.
    errors_allowed = slo.error_ratio is not None or not environment.runner.errors
    if errors_allowed and not environment.runner.exceptions:
        environment.process_exit_code = 0


class StepLoadShape(LoadTestShape):
    """Users grow by --step-users every --step-duration seconds up to -u; the test ends
    after the last step has run its duration. Inactive unless --step-load is given (see
    disable_shape_unless_asked)."""

    use_common_options = True  # reads -u; also keeps locust from warning that -u is ignored

    def tick(self):
        options = self.runner.environment.parsed_options
        step_users = max(1, options.step_users)
        max_users = options.num_users or step_users
        steps = math.ceil(max_users / step_users)
        step = int(self.get_run_time() // options.step_duration)
        if step >= steps:
            return None
        return min(max_users, (step + 1) * step_users), step_users


@events.init.add_listener
def disable_shape_unless_asked(environment, **_) -> None:
    # Locust picks any shape class in the locustfile automatically; make it opt-in.
    if not environment.parsed_options.step_load:
        environment.shape_class = None
