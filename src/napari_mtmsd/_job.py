"""A long step of the interactive session (``workspace.Workspace``): what computes, in any
thread, and what puts its result in place, in the caller's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any

from ._console import run_with_bar
from ._progress import Progress
from .update import PartialMap


@dataclasses.dataclass
class Job:
    """A long step: ``steps`` computes (any thread), ``commit(result)`` applies it (caller's
    thread). ``note`` tells the user why the job is not the one asked for (an Update that
    trains afresh).

    A job that predicts a map fills ``partial`` in place; the caller's thread hands each record
    to :meth:`on_record` (also those that arrive after a Stop), which calls ``on_partial(map)``
    at the first finished region and ``on_region(region)`` at each, so a view shows the map
    grow. Without records that carry a region the map shows when the job commits."""

    name: str
    steps: Generator[Progress, None, Any]
    commit: Callable[[Any], Any]
    note: str | None = None
    partial: PartialMap | None = None
    on_partial: Callable[[PartialMap], Any] | None = None
    on_region: Callable[[Any], Any] | None = None

    def run(self, progress: bool = True) -> Any:
        steps = self.steps if self.partial is None else _tap(self.steps, self.on_record)
        return self.commit(run_with_bar(steps, self.name, progress))

    def on_record(self, record: Progress) -> None:
        region = record.get("region")
        if self.partial is None or region is None:
            return
        first = self.partial.done == 0
        self.partial.add(region)
        if first and self.on_partial is not None:
            self.on_partial(self.partial)
        if self.on_region is not None:
            self.on_region(region)

    def stopped(self) -> str:
        """What a Stop leaves, in words (the status line)."""
        if self.partial is None or self.partial.done == 0:
            return "stopped, nothing changed"
        return (
            f"stopped: {100 * self.partial.fraction:.0f} % of the scene predicted (kept on "
            "screen; the last complete prediction is unchanged)"
        )


def _tap(
    steps: Generator[Progress, None, Any], see: Callable[[Progress], None]
) -> Generator[Progress, None, Any]:
    """``steps`` with ``see`` called on each record in the thread that drives them."""
    try:
        while True:
            try:
                record = next(steps)
            except StopIteration as stop:
                return stop.value
            see(record)
            yield record
    finally:
        steps.close()
