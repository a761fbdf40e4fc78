"""The job runner: results, Stop, failures of every kind, one compute thread."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("qtpy")

from napari_mtmsd._qt._workers import JobRunner
from napari_mtmsd.errors import Cancelled, DeviceError


def _slow(n: int, delay: float = 0.02, fail: BaseException | None = None):
    for i in range(n):
        time.sleep(delay)
        if fail is not None and i == 2:
            raise fail
        yield {"stage": "test", "step": i + 1, "total": n}
    return "result"


def test_runner_result_stop_and_failures(qtbot, errors):
    runner = JobRunner()
    got, records = [], []
    runner.start("ok", _slow(5), got.append, records.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert got == ["result"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[-1]["total"] == 5 and "elapsed" in records[-1]

    # Stop: effective at the next yield, no result delivered, runner free again
    runner.start("long", _slow(10_000), got.append)
    qtbot.waitUntil(lambda: runner.worker is not None and runner.worker.is_running, timeout=5000)
    t0 = time.perf_counter()
    runner.stop()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert time.perf_counter() - t0 < 1.0
    assert got == ["result"]

    # RuntimeError subclasses (torch, DeviceError) must reach the user, not vanish in superqt
    runner.start(
        "device", _slow(5, fail=DeviceError("device 'cuda' is not available")), got.append
    )
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert errors == ["device failed: device 'cuda' is not available"]
    assert isinstance(runner.last_error, DeviceError)

    runner.start("value", _slow(5, fail=ValueError("bad value 3")), got.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert errors[-1] == "value failed: ValueError: bad value 3"

    # a job that cancels itself is a stop, not an error
    runner.start("cancel", _slow(5, fail=Cancelled("user")), got.append)
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
    assert len(errors) == 2 and got == ["result"]


def _thread(n: int):
    for i in range(n):
        time.sleep(0.01)
        yield {"stage": "test", "step": i + 1, "total": n}
    return threading.get_ident()


def test_jobs_share_one_compute_thread(qtbot, errors):
    # one long-lived thread for every section's jobs: one OpenMP team (see compute_pool)
    first, second = JobRunner(), JobRunner()
    threads, messages = [], []
    second.message.connect(messages.append)
    first.start("first", _thread(20), threads.append)
    second.start("second", _thread(3), threads.append)  # queued behind the first, not beside it
    assert messages == ["second: waiting for the running job"]
    qtbot.waitUntil(lambda: not first.busy and not second.busy, timeout=5000)
    first.start("third", _thread(3), threads.append)
    qtbot.waitUntil(lambda: not first.busy, timeout=5000)
    assert len(threads) == 3 and len(set(threads)) == 1
    assert threads[0] != threading.get_ident()  # not the main thread
    assert errors == []


def test_runner_refuses_a_second_job(qtbot, errors):
    runner = JobRunner()
    runner.start("first", _slow(50), lambda r: None)
    second = _slow(5)
    runner.start("second", second, lambda r: None)
    assert second.gi_frame is None  # closed, never started
    runner.stop()
    qtbot.waitUntil(lambda: not runner.busy, timeout=5000)
