"""Train/test splits of a ground-truth map: the paper's random protocol and honest spatial ones.

Specs (``parse_split``):

- ``random:F`` (0 < F < 1): per class ``round(F * n_c)`` training pixels (numpy rounding, half to
  even), at least 1, and at most ``n_c - 1`` so a test pixel remains; drawn with
  ``numpy.random.default_rng(seed)``, classes in ascending order. This is the paper's protocol
  (10 % of Indian Pines: 1025 training pixels).
- ``per-class:N``: ``N`` training pixels per class, capped at ``n_c - 1`` (a class of one pixel
  trains on it and has no test pixel).
- ``blocks:K``: the scene is cut into a ``K x K`` grid of blocks (``numpy.array_split`` of rows
  and columns); whole blocks are training blocks, all other blocks test, so training and test
  pixels are spatially disjoint. Rule (seeded): blocks are visited in a random order; first,
  while a class that occupies at least two blocks has no training pixel, the block adding the
  most such classes is taken (fewest labelled pixels first on ties), never one holding the
  last test block of a class; then blocks are added until training holds at least 10 % of the
  labelled pixels, skipping blocks that would pass 30 % or take a class's last test block.
  A class confined to one block cannot be on both sides: it stays on the test side.
  Patches around pixels near a block edge still see the neighbouring block: the guard is the
  block size, so prefer blocks larger than the feature window.
- ``mask:TRAIN,TEST``: two label or mask files (anything ``io.read_labels`` reads); nonzero
  pixels are train / test. Pixels outside the labelled ground truth are dropped with a warning
  (the Pavia U fixed training mask labels 1147 pixels that ``PaviaU_gt`` leaves unlabelled).

Training and test masks are always disjoint and inside ``gt > 0``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

KINDS = ("random", "per-class", "blocks", "mask")
_USAGE = (
    "expected one of 'random:FRACTION' (0 < FRACTION < 1), 'per-class:N', 'blocks:K' (K >= 2) "
    "or 'mask:TRAIN_FILE,TEST_FILE'"
)
#: Training share of the labelled pixels that ``blocks:K`` aims for.
BLOCK_SHARE = (0.10, 0.30)


@dataclass(frozen=True)
class SplitSpec:
    kind: str
    fraction: float | None = None
    count: int | None = None
    files: tuple[Path, Path] | None = None


def parse_split(spec: str) -> SplitSpec:
    """Parse a split spec string; a malformed one raises ``InputError`` with the accepted forms."""
    kind, sep, value = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if not sep or kind not in KINDS or not value:
        raise InputError(f"split {spec!r}: {_USAGE}")
    if kind == "random":
        try:
            fraction = float(value)
        except ValueError:
            fraction = float("nan")
        if not 0.0 < fraction < 1.0:
            raise InputError(f"split {spec!r}: FRACTION must be a number in (0, 1)")
        return SplitSpec(kind, fraction=fraction)
    if kind == "mask":
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 2 or not all(parts):
            raise InputError(f"split {spec!r}: expected 'mask:TRAIN_FILE,TEST_FILE'")
        return SplitSpec(kind, files=(Path(parts[0]), Path(parts[1])))
    try:
        count = int(value)
    except ValueError:
        count = 0
    least = 2 if kind == "blocks" else 1
    if count < least:
        raise InputError(f"split {spec!r}: expected an integer >= {least} after '{kind}:'")
    return SplitSpec(kind, count=count)


def make_split(gt: np.ndarray, spec: str, seed: int = 827) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` boolean ``(H, W)`` masks for ground truth ``gt`` (0 = unlabelled)."""
    gt = np.asarray(gt)
    if gt.dtype.kind == "f" and np.all(np.isfinite(gt)) and np.all(gt == np.round(gt)):
        gt = gt.astype(np.int64)  # label maps saved as doubles (common in .mat files)
    if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer):
        raise InputError(
            f"ground truth of shape {gt.shape}, dtype {gt.dtype}: expected (H, W) integer labels"
        )
    parsed = parse_split(spec)
    if not (gt > 0).any():
        raise InputError("ground truth has no labelled pixel (all 0): nothing to split")
    rng = np.random.default_rng(seed)
    if parsed.kind == "random":
        train = _per_class(gt, rng, lambda n: int(np.round(parsed.fraction * n)))
    elif parsed.kind == "per-class":
        train = _per_class(gt, rng, lambda n: parsed.count)
    elif parsed.kind == "blocks":
        return _blocks(gt, parsed.count, rng)
    else:
        return _masks(gt, *parsed.files)
    return train, (gt > 0) & ~train


def _per_class(gt: np.ndarray, rng: np.random.Generator, wanted) -> np.ndarray:
    flat = gt.reshape(-1)
    train = np.zeros(flat.shape, dtype=bool)
    for c in np.unique(flat[flat > 0]):
        where = np.flatnonzero(flat == c)
        n = len(where)
        n_train = max(1, min(int(wanted(n)), n - 1)) if n > 1 else 1
        train[rng.permutation(where)[:n_train]] = True
    return train.reshape(gt.shape)


def _blocks(gt: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = gt.shape
    if k > min(h, w):
        raise InputError(
            f"split 'blocks:{k}': the {h}x{w} scene cannot be cut into {k}x{k} blocks"
        )
    row_edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(h), k)])
    col_edges = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(w), k)])
    block_id = (np.searchsorted(row_edges, np.arange(h), side="right") - 1)[:, None] * k + (
        np.searchsorted(col_edges, np.arange(w), side="right") - 1
    )[None, :]
    classes = np.unique(gt[gt > 0])
    labelled = gt > 0
    # counts[b, j]: pixels of class j in block b
    counts = np.zeros((k * k, len(classes)), dtype=np.int64)
    np.add.at(counts, (block_id[labelled], np.searchsorted(classes, gt[labelled])), 1)
    present = counts > 0
    total = counts.sum()
    order = rng.permutation(k * k)
    train_blocks = np.zeros(k * k, dtype=bool)

    def allowed(b: int) -> bool:
        test_side = present & ~train_blocks[:, None]
        test_side[b] = False
        return bool(np.all(test_side.any(axis=0) | ~present.any(axis=0) | ~present[b]))

    splittable = present.sum(axis=0) >= 2
    while True:
        covered = (present & train_blocks[:, None]).any(axis=0)
        need = splittable & ~covered
        if not need.any():
            break
        candidates = [b for b in order if not train_blocks[b] and allowed(b)]
        gains = [(int((present[b] & need).sum()), -int(counts[b].sum())) for b in candidates]
        if not candidates or max(gains)[0] == 0:
            break  # the remaining classes cannot be covered without emptying their test side
        train_blocks[candidates[gains.index(max(gains))]] = True
    lo, hi = BLOCK_SHARE
    for b in order:
        share = counts[train_blocks].sum() / total
        if share >= lo:
            break
        if (
            not train_blocks[b]
            and allowed(b)
            and (counts[train_blocks].sum() + counts[b].sum()) / total <= hi
        ):
            train_blocks[b] = True
    train = train_blocks[block_id] & labelled
    return train, labelled & ~train


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from .io import read_labels

    if not path.is_file():
        raise InputError(f"split mask file {path}: not found")
    data = np.asarray(read_labels(path).data)
    if data.shape != shape:
        raise InputError(
            f"split mask file {path}: shape {data.shape}, expected the ground truth's {shape}"
        )
    return data != 0


def _masks(gt: np.ndarray, train_file: Path, test_file: Path) -> tuple[np.ndarray, np.ndarray]:
    train = _read_mask(train_file, gt.shape)
    test = _read_mask(test_file, gt.shape)
    overlap = int((train & test).sum())
    if overlap:
        raise InputError(
            f"split masks {train_file} and {test_file} share {overlap} pixels: expected disjoint"
        )
    labelled = gt > 0
    for name, mask in ((train_file, train), (test_file, test)):
        outside = int((mask & ~labelled).sum())
        if outside:
            warnings.warn(
                f"split mask {name}: {outside} pixels are unlabelled in the ground truth and are "
                "left out",
                stacklevel=3,
            )
    return train & labelled, test & labelled


def split_counts(gt: np.ndarray, train: np.ndarray, test: np.ndarray) -> list[dict[str, int]]:
    """One row per class: ``{"class", "labelled", "train", "test"}`` pixel counts."""
    gt = np.asarray(gt)
    rows = []
    for c in np.unique(gt[gt > 0]):
        where = gt == c
        rows.append(
            {
                "class": int(c),
                "labelled": int(where.sum()),
                "train": int((where & train).sum()),
                "test": int((where & test).sum()),
            }
        )
    return rows
