"""Exceptions with messages meant for the user (CLI prints them, napari shows them as notifications)."""

from __future__ import annotations

import errno


class MTMSDError(Exception):
    """Base class: the message names the file or value and what was expected."""


class InputError(MTMSDError, ValueError):
    """A file or value the user gave cannot be used as it is."""


class ModelFileError(MTMSDError, ValueError):
    """A model or classifier directory is missing, corrupt, truncated, of another format or mismatched."""


class DeviceError(MTMSDError, RuntimeError):
    """The requested compute device is unavailable or failed."""


class OutputError(MTMSDError, ValueError):
    """An output path would replace or remove something that is not ours, or was not asked for."""


class Cancelled(MTMSDError):
    """Raised inside long work when the user asked it to stop."""


def describe(exc: BaseException) -> str:
    """One line for the user: our messages as they are; system errors with the file they hit;
    anything else named as unexpected (a bug to report; ``--debug`` shows where)."""
    if isinstance(exc, MTMSDError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        text = f"no space left on the device{_where(exc)}; free some space and run again"
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or exc}{_where(exc)}"
    elif isinstance(exc, MemoryError):
        text = f"out of memory ({exc or 'allocation failed'}); try a smaller input or tile size"
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (--debug shows where; please report it)"
    return " ".join(text.split())


def _where(exc: OSError) -> str:
    names = [n for n in (exc.filename, exc.filename2) if n]
    return f" ({' -> '.join(map(str, names))})" if names else ""
