"""The ONNX Runtime engine's solo session: a call that starts alone in the process runs on every
core, one that runs beside another on its instance's share; the answers are the same either way.
Real ONNX Runtime sessions on the exported test model.
"""

from __future__ import annotations

import threading

import numpy as np

from segserve.engine import create_engines
from segserve.engine.base import CPU_CALLS, RunningCalls
from segserve.repository import scan
from segserve_models.export import sample_images


def solo_config(entry, solo_threads: int, instances: int = 2):
    onnxruntime = entry.config.onnxruntime.model_copy(update={"intra_op_threads": 1, "solo_threads": solo_threads})
    return entry.config.model_copy(update={"instances": instances, "onnxruntime": onnxruntime})


class SessionCalls:
    """Which session ran: wraps a real session's ``run``."""

    def __init__(self, session):
        self.calls = 0
        original = session.run

        def run(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        session.run = run


def test_running_calls_says_whether_a_call_started_alone():
    calls = RunningCalls()
    with calls.enter() as first:
        with calls.enter() as second:
            assert (first, second) == (True, False)
    with calls.enter() as again:
        assert again  # both left: the count went back to 0
    with calls.enter(on_cpu=False) as elsewhere:
        assert not elsewhere  # a call on another device is never alone...
        with calls.enter() as beside_it:
            assert beside_it  # ...and takes no core from one on the CPU
    inside, release = threading.Event(), threading.Event()

    def hold():
        with calls.enter():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    with calls.enter() as beside:
        assert not beside  # another thread's call counts: the cores are the process'
    release.set()
    holder.join()


def test_instances_share_one_solo_session_and_lone_calls_use_it(semantic_repo):
    entry = scan(semantic_repo)[0]
    engines = create_engines(solo_config(entry, solo_threads=2), entry.version_dir, "onnxruntime")
    assert len(engines) == 2
    first, second = engines
    assert first._solo is not None and first._solo is second._solo  # one solo session for the model
    assert first._session is not second._session
    assert (first.info.detail["intra_op_threads"], first.info.detail["solo_threads"]) == ("1", "2")

    solo, own = SessionCalls(first._solo), SessionCalls(first._session)
    images = sample_images(2, 128, 128, seed=3).numpy()
    alone = first.infer({"images": images})["labels"]
    assert (solo.calls, own.calls) == (1, 0)
    with CPU_CALLS.enter():  # another call is running: this one keeps to its own thread
        beside = first.infer({"images": images})["labels"]
    assert (solo.calls, own.calls) == (1, 1)
    np.testing.assert_array_equal(alone, beside)


def test_no_solo_session_when_it_would_have_no_more_threads(semantic_repo):
    entry = scan(semantic_repo)[0]
    engines = create_engines(solo_config(entry, solo_threads=1), entry.version_dir, "onnxruntime")
    assert all(e._solo is None and "solo_threads" not in e.info.detail for e in engines)
    assert engines[0].infer({"images": sample_images(1, 128, 128).numpy()})["labels"].shape == (1, 128, 128)


def test_other_backends_get_instances_of_their_own(semantic_repo):
    entry = scan(semantic_repo)[0]
    engines = create_engines(solo_config(entry, solo_threads=2, instances=2), entry.version_dir, "torch")
    assert [e.info.backend for e in engines] == ["torch", "torch"] and engines[0] is not engines[1]
