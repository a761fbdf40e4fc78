"""Progress of long calls from Python the way scientific Python shows it: a tqdm bar per stage
(``tqdm.auto``: a text bar in a terminal, a widget in Jupyter)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

from ._progress import Progress, run

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
            self.bar = tqdm(total=total or None, desc=f"{self.desc}: {stage}", leave=False)
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


def run_with_bar(gen: Generator[Progress, None, R], desc: str, progress: bool = True) -> R:
    """Drive a progress generator to its end; ``progress=False`` shows nothing."""
    if not progress:
        return run(gen)
    bars = TqdmBars(desc)
    try:
        return run(gen, bars)
    finally:
        bars.close()
