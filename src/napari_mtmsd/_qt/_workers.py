"""One place that runs the core's long jobs for the widgets.

Every long job of the core is a generator ``iter_<job>`` that yields progress records and returns
its result (docs/architecture.md, "Long work"). :class:`JobRunner` runs one at a time under
napari's ``create_worker`` so the UI never blocks: the records drive a progress bar and an ETA,
``stop()`` quits at the next yield, the result comes back in the main thread (the only place
layers are touched), and failures reach the user as a notification naming the cause. A job that
is stopped or fails calls no result handler, so labels, model and layers stay as they were, but
for what the job showed while it ran (a map filled tile by tile), which its ``on_stop`` names.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, QThreadPool, Signal

from napari_mtmsd._text import eta_text

log = logging.getLogger(__name__)

_POOL: QThreadPool | None = None


def compute_pool() -> QThreadPool:
    """The one thread that runs every job of the plugin, kept alive between jobs.

    torch's CPU kernels run on OpenMP (libgomp), which gives every thread that starts a parallel
    region a team of its own; once there are more team threads than CPU cores it stops spinning
    between regions and sleeps on a futex instead, and a whole-scene prediction (thousands of
    short regions) ran 10-20 % slower in napari's global pool than in a script. One long-lived
    thread keeps a single team (and queues a second job behind the first, which on a small CPU
    is faster than running both at once).
    """
    global _POOL
    if _POOL is None:
        _POOL = QThreadPool()
        _POOL.setMaxThreadCount(1)
        _POOL.setExpiryTimeout(-1)
    return _POOL


Record = dict[str, Any]


@dataclass
class _Failure:
    """A job's exception, carried back through ``returned``.

    superqt's worker swallows ``RuntimeError`` (it takes it for a deleted Qt object and only warns,
    without emitting ``errored`` or ``finished``); torch errors and ``DeviceError`` are
    ``RuntimeError``s, so the relay catches everything and hands it back as a value instead.
    """

    exc: BaseException
    text: str


def _relay(gen: Generator[Record, None, Any]) -> Generator[Record, None, Any]:
    """Run ``gen`` to its end in the worker thread, turning an exception into a ``_Failure``."""
    try:
        return (yield from gen)
    except Exception as exc:  # every failure must reach the user, whatever its type
        return _Failure(exc, traceback.format_exc())


def describe_error(exc: BaseException) -> str:
    """The user-facing cause: the project's errors already name the file or value."""
    from napari_mtmsd.errors import MTMSDError

    if isinstance(exc, MTMSDError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobRunner(QObject):
    """Runs one core job at a time and reports on it with Qt signals.

    Signals: ``busy_changed(bool)`` (disable buttons), ``progress(dict)`` (each record, with
    ``elapsed`` and ``eta`` added), ``message(str)`` (one-line status).
    """

    busy_changed = Signal(bool)
    progress = Signal(dict)
    message = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker = None
        self._stopping = False
        self._name = ""
        self._t0 = 0.0
        self._on_stop: Callable[[], str] | None = None
        self.last_error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def worker(self):
        """The running napari worker, or ``None`` (tests wait on its signals)."""
        return self._worker

    def start(
        self,
        name: str,
        gen: Generator[Record, None, Any],
        on_done: Callable[[Any], None],
        on_progress: Callable[[Record], None] | None = None,
        on_record: Callable[[Record], None] | None = None,
        on_stop: Callable[[], str] | None = None,
    ) -> None:
        """Run ``gen`` (an ``iter_<job>(...)`` not started yet: argument errors surface in the
        worker) in a thread; in the main thread ``on_done(result)`` if it succeeds,
        ``on_progress`` on each record (with ``elapsed`` and ``eta``) until a Stop, ``on_record``
        on every record, also those queued behind a Stop (partial results); ``on_stop()`` says
        what a Stop leaves (default: nothing changed)."""
        from napari.qt.threading import create_worker

        if self._worker is not None:
            from napari.utils.notifications import show_warning

            gen.close()
            show_warning(f"'{self._name}' is still running: stop it or wait for it to finish.")
            return
        self._name, self._on_stop = name, on_stop
        self.last_error = None
        self._t0 = time.perf_counter()
        self._stopping = False
        worker = create_worker(_relay, gen, _progress={"desc": name})
        self._worker = worker
        pbar = worker.pbar

        def on_yield(record: Record) -> None:
            # records queued by the thread can arrive after a Stop or after the job ended: they
            # must not overwrite "stopping..." or "stopped" with a stale progress line
            if not isinstance(record, dict) or self._worker is not worker:
                return
            if on_record is not None:
                on_record(record)
            if self._stopping:
                return
            step, total = int(record.get("step", 0)), int(record.get("total", 0))
            if total and pbar.total != total:
                pbar.total = total
            if step != pbar.n:
                pbar.update(step - pbar.n)
            elapsed = time.perf_counter() - self._t0
            record = {**record, "elapsed": elapsed, "eta": eta_text(elapsed, step, total)}
            if on_progress is not None:
                on_progress(record)
            self.progress.emit(record)

        def on_returned(result: Any) -> None:
            if isinstance(result, _Failure):
                self._fail(result)
                return
            try:
                on_done(result)
            except Exception as exc:  # a result the widget cannot show is still the user's news
                self._fail(_Failure(exc, traceback.format_exc()))
                return
            self.message.emit(f"{name}: done in {time.perf_counter() - self._t0:.1f} s")

        def on_finished() -> None:
            # closing the relay closes the job: its cleanup runs even after a stop
            worker._gen.close()
            self._worker = None
            self.busy_changed.emit(False)

        worker.yielded.connect(on_yield)
        worker.returned.connect(on_returned)
        worker.aborted.connect(lambda: self.message.emit(self._stopped_text()))
        worker.finished.connect(on_finished)
        self.busy_changed.emit(True)
        pool = compute_pool()
        waiting = pool.activeThreadCount() > 0
        self.message.emit(
            f"{name}: waiting for the running job" if waiting else f"{name}: running"
        )
        pool.start(worker)

    def _fail(self, failure: _Failure) -> None:
        from napari.utils.notifications import show_error, show_info

        from napari_mtmsd.errors import Cancelled

        if isinstance(failure.exc, Cancelled):
            show_info(f"{self._name} stopped")
            self.message.emit(self._stopped_text())
            return
        self.last_error = failure.exc
        log.error("%s failed\n%s", self._name, failure.text)
        text = f"{self._name} failed: {describe_error(failure.exc)}"
        self.message.emit(text)
        show_error(text)

    def _stopped_text(self) -> str:
        said = self._on_stop() if self._on_stop is not None else "stopped, nothing changed"
        return f"{self._name}: {said}"

    def stop(self) -> None:
        """Ask the running job to stop at its next yield (at least once a second of work)."""
        if self._worker is not None:
            self._stopping = True
            self._worker.quit()
            self.message.emit(f"{self._name}: stopping...")

    def stop_and_wait(self, msecs: int = 10_000) -> None:
        """Stop and wait for the thread without touching Qt objects: used when the widget dies.

        The worker's signals are disconnected first, so nothing queued reaches a deleted widget.
        """
        worker, self._worker = self._worker, None
        if worker is None:
            return
        for signal in (worker.yielded, worker.returned, worker.aborted, worker.finished):
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):
                pass
        worker.quit()
        deadline = time.perf_counter() + msecs / 1000
        while worker.is_running and time.perf_counter() < deadline:
            time.sleep(0.02)
        if not worker.is_running:
            worker._gen.close()
        if worker.pbar is not None:
            worker.pbar.close()
