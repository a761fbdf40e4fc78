"""Progress on a console: from Python a tqdm bar per stage, the way scientific Python shows it
(``tqdm.auto``: a text bar in a terminal, a widget in Jupyter); from the CLI one status line per
stage that also reads well in a log."""

from __future__ import annotations

import sys
import time
from collections.abc import Generator
from typing import Any, TypeVar

from ._progress import Callback, Progress, run
from ._text import eta_text

R = TypeVar("R")


class TqdmBars:
    """A progress callback: one bar per ``stage`` of the records, with the loss when given."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, record: Progress) -> None:
        from tqdm.auto import tqdm

        stage, total = str(record.get("stage", "")), int(record.get("total", 0) or 0)
        if stage != self.stage or self.bar is None:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total or None, desc=f"{self.desc}: {stage}")
        if total and self.bar.total != total:
            self.bar.total = total
        step = int(record.get("step", 0))
        if step > self.bar.n:
            self.bar.update(step - self.bar.n)
        if "loss" in record:
            self.bar.set_postfix(loss=f"{float(record['loss']):.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_with_bar(
    gen: Generator[Progress, None, R],
    desc: str,
    progress: bool = True,
    callback: Callback | None = None,
) -> R:
    """Drive a progress generator to its end: with a bar, or with ``callback`` (which then shows
    what it likes), or silently (``progress=False``)."""
    if callback is not None or not progress:
        return run(gen, callback)
    bars = TqdmBars(desc)
    try:
        return run(gen, bars)
    finally:
        bars.close()


class ProgressPrinter:
    """One status line per job stage on stderr: redrawn in place on a terminal, printed every few
    seconds otherwise (logs), with the rate and an ETA."""

    def __init__(self, stream: Any = None, every_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s if not self.tty else 0.2
        self.stage: str | None = None
        self.t_stage = self.t_last = 0.0

    def __call__(self, rec: dict[str, Any]) -> None:
        now = time.perf_counter()
        stage = rec.get("stage", "")
        if stage != self.stage:
            self.finish()
            self.stage, self.t_stage, self.t_last = stage, now, 0.0
        if "message" in rec:
            self._write(f"[{stage}] {rec['message']}", newline=True)
        step, total = rec.get("step", 0), rec.get("total", 0)
        if now - self.t_last < self.every_s and step != total:
            return
        self.t_last = now
        elapsed = now - self.t_stage
        parts = [f"[{stage}] {step}/{total}"]
        if "loss" in rec:
            parts.append(f"loss {rec['loss']:.4f}")
        if "samples_per_s" in rec:
            parts.append(f"{rec['samples_per_s']:.0f} samples/s")
        if eta := eta_text(elapsed, step, total):
            parts.append(eta)
        parts.append(f"{fmt_s(elapsed)}")
        self._write("  ".join(parts), newline=not self.tty)

    def finish(self) -> None:
        if self.tty and self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()

    def _write(self, text: str, newline: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def fmt_s(s: float) -> str:
    """``m:ss``."""
    s = round(s)
    return f"{s // 60}:{s % 60:02d}"
