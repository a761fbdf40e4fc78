"""The few texts every front end reads or writes the same way: integer lists and time left."""

from __future__ import annotations

from itertools import pairwise

from .errors import InputError


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"50:950:50"`` or ``"50:950"`` (inclusive range, step 1 by default) or ``"0, 1, 2"``
    (commas and/or spaces) -> a tuple of ints; ``what`` names the value in the error."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop, step = (*parts, 1) if len(parts) == 2 else parts
            if step <= 0:
                raise ValueError
            values = tuple(range(start, stop + 1, step))
        else:
            values = tuple(int(p) for p in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if not values:
        raise InputError(
            f"{what} {text!r}: expected integers like '0, 1, 2' or a range 'start:stop:step'"
        )
    return values


def format_ints(values: tuple[int, ...]) -> str:
    """The shortest of the forms :func:`parse_ints` reads."""
    if len(values) > 5:
        step = values[1] - values[0]
        if step > 0 and all(b - a == step for a, b in pairwise(values)):
            return f"{values[0]}:{values[-1]}:{step}"
    return ", ".join(str(v) for v in values)


def eta_text(elapsed: float, step: int, total: int) -> str:
    """``'12 s left'`` from the mean rate so far (empty until it means something)."""
    if step <= 0 or total <= 0 or step >= total or elapsed <= 0:
        return ""
    left = elapsed / step * (total - step)
    if left >= 90:
        return f"{left / 60:.0f} min left"
    return f"{left:.0f} s left"
