"""Atomic, owner-checked file and directory writes, with a hash manifest of what was written.

A file is written to a hidden ``.tmp-PID-NAME-*`` sibling and renamed onto its name. A directory
is written whole into such a sibling, then swapped with the previous one in a single
``renameat2(RENAME_EXCHANGE)`` where the kernel has it (Linux >= 3.15); elsewhere the previous one
is moved aside to ``.old-PID-NAME`` first and, should the process die between the two renames,
put back by the next write or load of that name. So a kill at any moment leaves the old or the
new version loadable under the name, never a mixture, and never nothing.

Every directory we write holds ``.napari-mtmsd.json``: a marker (format version, kind) and the
sha256 of every file in it. Only a directory holding that marker is ever replaced, so a user's
own directory (or a file) given as an output is refused rather than removed; ``verify`` checks
the manifest when an artefact is loaded, so a flipped byte is reported rather than used.
Leftovers of killed processes (``.tmp-*``, ``.old-*`` whose process is gone) are cleaned up by
the next write in the same directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ModelFileError, OutputError

MARKER = ".napari-mtmsd.json"
MARKER_VERSION = 1
_LEFTOVER = re.compile(r"^\.(tmp|old)-(\d+)-(.+)$")  # .tmp-PID-NAME-RANDOM, .old-PID-NAME


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; what we publish gets the usual permissions
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is someone else's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def sweep(parent: str | os.PathLike) -> None:
    """Clean what killed processes left in ``parent``: ``.tmp-*`` are removed; an ``.old-NAME``
    is put back when NAME is missing (a kill between the two renames of a save), else removed."""
    parent = Path(parent)
    try:
        children = list(parent.iterdir())
    except OSError:
        return
    for child in children:
        m = _LEFTOVER.match(child.name)
        if m is None or _alive(int(m.group(2))):
            continue
        target = parent / m.group(3)
        if m.group(1) == "old" and not target.exists():
            with contextlib.suppress(OSError):
                os.rename(child, target)
        else:
            _remove(child)


def remove_ours(root: Path, legacy: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove the directories in ``root`` that are ours (marker, or ``legacy(child)``) and the
    leftovers of dead processes; then ``root`` itself if empty. Returns what was kept."""
    try:
        children = list(root.iterdir())
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise OutputError(f"{root}: is a file, not a directory") from None
    kept = []
    for child in children:
        m = _LEFTOVER.match(child.name)
        leftover = child.name.startswith((".tmp-", ".old-")) and not (
            m and _alive(int(m.group(2)))
        )
        is_dir = child.is_dir() and not child.is_symlink()
        if leftover or (is_dir and (owner_kind(child) or (legacy and legacy(child)))):
            _remove(child)
        else:
            kept.append(child)
    if not kept:
        with contextlib.suppress(OSError):
            root.rmdir()
    return kept


def _check_parents(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: {parent} is a file, not a directory")
            return


def owner_kind(path: str | os.PathLike) -> str | None:
    """The kind recorded in ``path``'s marker (e.g. ``"model"``), or None when not ours."""
    marker = Path(path) / MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("format_version"), int):
        return None
    return str(info.get("kind", "output"))


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` if a directory may be written there: absent or empty, or ours and ``overwrite``.

    Raises ``OutputError`` naming what is in the way; nothing is changed, except that a directory
    hidden by a save killed between its renames is put back first (see ``restore``).
    """
    path = Path(path)
    restore(path)
    _check_parents(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputError(f"{path}: is a file, not a directory; choose a directory name")
    if not path.exists() or not any(path.iterdir()):
        return path
    kind = owner_kind(path)
    if kind is None:
        raise OutputError(
            f"{path}: holds files napari-mtmsd did not write (no {MARKER}); it is left as it is:"
            " choose a new or empty directory"
        )
    if not overwrite:
        raise OutputError(
            f"{path}: already holds a napari-mtmsd {kind}; add --overwrite to replace it"
        )
    return path


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """``path`` if a file may be written there: absent, or a file and ``overwrite``."""
    path = Path(path)
    _check_parents(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; expected a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: exists; add --overwrite to replace it")
    return path


def claim_dir(path: str | os.PathLike, kind: str) -> Path:
    """Create ``path`` (absent, empty or ours) and mark it ours, for outputs written file by file."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and owner_kind(path) is None:
        check_output_dir(path)  # raises: not ours
    path.mkdir(parents=True, exist_ok=True)
    if owner_kind(path) is None:
        write_text(path / MARKER, json.dumps({"format_version": MARKER_VERSION, "kind": kind}))
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _publish(root: Path) -> dict[str, str]:
    """The manifest of ``root``; every entry gets the usual permissions on the way (some writers,
    safetensors among them, create private 0600 files a colleague could not read)."""
    entries = sorted(root.rglob("*"))
    for p in entries:
        if not p.is_symlink():
            os.chmod(p, _DIR_MODE if p.is_dir() else _FILE_MODE)
    files = [p for p in entries if p.is_file() and p.name != MARKER]
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


_verified: dict[tuple, bool] = {}


def verify(path: str | os.PathLike) -> None:
    """``ModelFileError`` unless every file listed in ``path``'s manifest exists with its sha256.

    A directory without a marker (written before markers existed) passes: there is nothing to
    check. Each unchanged directory is hashed once per process.
    """
    path = Path(path)
    restore(path)
    marker = path / MARKER
    if not marker.is_file():
        return
    try:
        files = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
        stats = tuple((n, (path / n).stat().st_size, (path / n).stat().st_mtime_ns) for n in files)
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path}: {exc.filename} is missing (listed in {MARKER})") from exc
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{marker} is unreadable or corrupt ({exc})") from exc
    key = (str(path.resolve()), stats)
    if _verified.get(key):
        return
    for name, digest in files.items():
        if sha256_file(path / name) != digest:
            raise ModelFileError(
                f"{path / name} is corrupt or truncated, or was altered (its sha256 differs from "
                f"the one in {MARKER}): write or copy it again"
            )
    _verified[key] = True


def restore(path: str | os.PathLike) -> None:
    """Put back ``path`` if a save was killed between its two renames (see ``sweep``)."""
    path = Path(path)
    if not path.exists() and path.parent.is_dir():
        sweep(path.parent)


def _libc_renameat2():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _libc_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit_dir(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
        return
    old = path.with_name(f".old-{os.getpid()}-{path.name}")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps libraries that choose a format by extension happy (e.g. ``".tif"``).
    """
    path = Path(path)
    _check_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; expected a file name")
    sweep(path.parent)
    prefix = f".tmp-{os.getpid()}-{path.name}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str = "output") -> Iterator[Path]:
    """Yield an empty temp directory beside ``path``; on success it replaces ``path`` whole,
    marked as ours (``kind``) with the sha256 of every file in it.

    An existing ``path`` is replaced only when it is ours or empty (else ``OutputError``, raised
    before anything is written).
    """
    path = Path(path)
    restore(path)
    check_output_dir(path, overwrite=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{path.name}-", dir=path.parent))
    os.chmod(tmp, _DIR_MODE)
    try:
        yield tmp
        info = {"format_version": MARKER_VERSION, "kind": kind, "files": _publish(tmp)}
        (tmp / MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")
        _commit_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
