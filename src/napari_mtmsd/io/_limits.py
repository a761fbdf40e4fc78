"""Sizes a file declares, checked before anything is allocated, read or hashed.

A header is a promise: a 2 kB file may declare a 40 TB array. Declared bytes must fit in what the
file stores (allowing for the best compression any of our formats uses) and, when an array is to
be held in memory, in the memory available now.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

#: deflate, the strongest compression in .mat and TIFF files we read, stays below 1032:1; a
#: declared size beyond this multiple of the stored bytes cannot be real data.
MAX_COMPRESSION = 1100
SLACK = 1 << 16  # headers and tiny arrays stored compactly


def memory_available() -> int:
    """Bytes of memory available to this process now: the kernel's ``MemAvailable`` estimate,
    within the cgroup's limit where one is set (containers); free pages elsewhere."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [
                int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")
            ]
    except (OSError, ValueError, IndexError):
        pass
    try:
        cg = Path("/sys/fs/cgroup")
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError):
            pass
    return max(0, min(found)) if found else 1 << 62


def _mb(n: float) -> str:
    return f"{n / 2**30:,.1f} GB" if n >= 2**30 else f"{n / 2**20:,.1f} MB"


def check_stored(path: Path | str, what: str, declared: int, stored: int | None = None) -> None:
    """InputError when ``declared`` bytes cannot come from ``stored`` bytes (default: the file's
    size): a truncated file, or a header that lies."""
    stored = os.path.getsize(path) if stored is None else stored
    if declared > MAX_COMPRESSION * stored + SLACK:
        raise InputError(
            f"{path}: {what} declares {_mb(declared)} but the file stores only {_mb(stored)} for "
            "it: truncated, or a malformed header"
        )


def check_memory(path: Path | str, what: str, nbytes: int, share: float = 0.5) -> None:
    """InputError when reading ``nbytes`` into memory would take more than ``share`` of the
    memory available."""
    budget = share * memory_available()
    if nbytes > budget:
        raise InputError(
            f"{path}: {what} needs {_mb(nbytes)} in memory, more than the {_mb(budget)} this "
            "machine can spare now"
        )
