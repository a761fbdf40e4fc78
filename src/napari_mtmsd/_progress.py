"""Long work as generators: the one convention shared by the CLI, the Python API and napari.

Every long job is written once as ``iter_<job>(...)``, a generator that yields progress records
(plain dicts with at least ``stage``, ``step`` and ``total``) and *returns* its result. napari runs
it under ``create_worker``, whose ``quit()`` stops it at the next yield; the CLI and the Python API
call ``run(gen, callback)``, which drives it to the end and returns the result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

R = TypeVar("R")
Progress = dict[str, Any]
Callback = Callable[[Progress], object]


def run(gen: Generator[Progress, None, R], callback: Callback | None = None) -> R:
    """Drive a progress generator to completion and return its result.

    ``callback`` sees every record; it may raise ``errors.Cancelled`` to stop the job.
    """
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            try:
                callback(record)
            except BaseException:
                gen.close()
                raise


def forward(gen: Generator[Progress, None, R], **extra: Any) -> Generator[Progress, None, R]:
    """Re-yield a sub-job's records (tagged with ``extra``) and return its result: ``yield from`` with labels."""
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            return stop.value
        yield {**record, **extra}


class Pacer:
    """When a job cut into fine units should yield a record: at most every ``interval`` seconds.

    A job whose units are short (a U-Net layer) asks ``due()`` after each one, so records, and
    with them a napari Stop, come within ``interval`` plus one unit, yet a fast job (the ``tiny``
    preset: thousands of units a second) does not flood the progress bar with signals.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.restart()

    def restart(self) -> None:
        """Count the next interval from now (a record was just yielded)."""
        self.last = time.perf_counter()

    def due(self) -> bool:
        if time.perf_counter() - self.last < self.interval:
            return False
        self.restart()
        return True


def paced(
    work: Generator[float, None, R],
    pacer: Pacer,
    amount: float,
    span: tuple[int, int],
    total: int,
    stage: str = "features",
    **extra: Any,
) -> Generator[Progress, None, R]:
    """Records from a job that yields its work in small increments (``amount`` in all, e.g.
    FLOPs): ``step`` moves over ``span`` (units done before, after) of ``total`` as the work
    gets done. A record when ``pacer`` says one is due, and one at the end."""
    done = 0.0
    while True:
        try:
            done += next(work)
        except StopIteration as stop:
            pacer.restart()
            yield {"stage": stage, "step": span[1], "total": total, **extra}
            return stop.value
        if pacer.due():
            step = span[0] + int((span[1] - span[0]) * min(done / max(amount, 1.0), 1.0))
            yield {"stage": stage, "step": step, "total": total, **extra}


def waiting(
    work: Callable[[], R], record: Progress, interval: float = 0.25
) -> Generator[Progress, None, R]:
    """Records while ``work`` runs in a thread: for work that cannot be cut (one scikit-learn
    fit), so that the progress line stays alive and a Stop is answered. ``record`` is yielded
    every ``interval`` seconds; the result of ``work``, or its exception, follows. A job closed
    meanwhile returns at once; the thread cannot be interrupted and finishes its fit unseen,
    its result dropped."""
    import threading

    done, out = threading.Event(), {}

    def target() -> None:
        try:
            out["value"] = work()
        except BaseException as exc:  # re-raised in the job's thread
            out["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="napari-mtmsd-fit", daemon=True).start()
    while not done.wait(interval):
        yield dict(record)
    if "error" in out:
        raise out["error"]
    return out["value"]


def imported(module: str, record: Progress) -> Generator[Progress, None, None]:
    """Import ``module`` unless it is: a first import can take a second or more that cannot
    be cut, so it runs in a thread while the job yields ``record`` (``waiting``)."""
    import importlib
    import sys

    if module not in sys.modules:
        yield from waiting(lambda: importlib.import_module(module), record)
