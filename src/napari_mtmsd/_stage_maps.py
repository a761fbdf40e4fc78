"""The stored form of whole-scene features: each decoder stage's map at its own resolution over
the scene, and the centre and global vectors formed from those maps on demand.

A pixel's centre vector is the stage map upsampled bilinearly to full resolution at the pixel,
its global vector the mean of the upsampled map over the pixel's ``window``: both are linear in
the stage map. Stages at 1/4 and 1/2 of the resolution hold 16x and 4x fewer cells than pixels,
so storing the maps themselves (float16, ``(Hs, Ws, T, Cs)`` a stage) and applying the separable
operators when features are read takes about a sixth of the bytes of the vectors (the ``cpu``
preset: 3,952 instead of 24,320 bytes a pixel; docs/features.md, "Storage").

The maps cover the scene plus the border a window and the interpolation reach beyond it. Tiles
start at multiples of the coarsest stage's cell size (``features.plan_tiles``), so the cells of
every stage lie on one grid over the scene; each cell is written by the tile whose served core
holds it (the first and last tiles along an axis also write the border), so it is computed
with at least ``margin`` pixels of context beyond the windows it serves. A single-tile scene
gives the tile's features to float16 rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import features as F
from ._progress import Pacer, Progress, paced
from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .features import FeatureSpec, Tile
    from .io import Cube
    from .model import DiffusionModel


_COLS = 32  # output columns whose operator is applied at once: as dense as it gets narrow


@dataclasses.dataclass(frozen=True)
class StageGrid:
    """Where one stage's stored map lies: cell (i, j) covers scene pixels ``factor * i ..`` and
    ``factor * j ..``; the stored map holds cells ``rows[0]:rows[1]``, ``cols[0]:cols[1]``."""

    stage: int
    factor: int
    channels: int
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageGrid:
        return cls(**{**d, "rows": tuple(d["rows"]), "cols": tuple(d["cols"])})


def _cells(n: int, f: int, window: int, extent: tuple[int, int]) -> tuple[int, int]:
    """The cells along an axis of ``n`` pixels that the windows of its pixels reach (their
    upsampled rows and the interpolation's second tap), within the tiles' extent."""
    lo_u, hi_u = -(window // 2), n - 1 - window // 2 + window - 1
    lo = int(np.floor((lo_u + 0.5) / f - 0.5))
    hi = int(np.floor((hi_u + 0.5) / f - 0.5)) + (2 if f > 1 else 1)
    return max(lo, extent[0] // f), min(hi, extent[1] // f)


def plan_grids(
    tiles: Sequence[Tile],
    height: int,
    width: int,
    window: int,
    stages: Sequence[int],
    stage_shapes: Sequence[tuple[int, ...]],
) -> list[StageGrid]:
    """The stored map of each stage; ``stage_shapes`` (Cs, hs, ws) of the first tile's maps."""
    t0, t1 = tiles[0], tiles[-1]
    grids = []
    for stage, (cs, hs, ws) in zip(stages, stage_shapes, strict=True):
        f = t0.h // hs
        if f * hs != t0.h or f * ws != t0.w or t0.r0 % f or t0.c0 % f:
            raise ValueError(f"stage {stage} of a {t0.h} x {t0.w} tile is {hs} x {ws}")
        rows = _cells(height, f, window, (t0.r0, t1.r0 + t1.h))
        cols = _cells(width, f, window, (t0.c0, t1.c0 + t1.w))
        grids.append(StageGrid(stage, f, cs, rows, cols))
    return grids


def owned(tile: Tile, grid: StageGrid, height: int, width: int) -> tuple[slice, slice]:
    """The cells of ``grid`` that ``tile`` writes, as slices of the stored map."""
    f = grid.factor

    def axis(served: tuple[int, int], n: int, cells: tuple[int, int]) -> slice:
        lo = cells[0] if served[0] == 0 else served[0] // f
        hi = cells[1] if served[1] == n else served[1] // f
        return slice(lo - cells[0], hi - cells[0])

    return axis(tile.rows, height, grid.rows), axis(tile.cols, width, grid.cols)


def iter_build(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec,
    open_maps: Callable[[list[StageGrid]], list[np.ndarray]],
    device: str | torch.device = "auto",
    memory_mb: float = 2048,
) -> Generator[Progress, None, list[StageGrid]]:
    """Every stage map of the scene, tile by tile, into the arrays ``open_maps(grids)`` gives
    ((Hs, Ws, T, Cs) float16 each, e.g. memory maps) -> the grids.

    Records count pixels as ``features.iter_scene``'s do: ``step`` of ``total`` (H x W), moving
    within a tile as its work gets done, at least every ``Pacer`` interval plus one U-Net layer.
    """
    import torch

    from ._unet_passes import Runner

    if spec.mode != "dense":
        raise InputError("whole-scene features use mode='dense'; 'patch' is for sampled pixels")
    runner = Runner(model, spec, device, memory_mb)
    H, W = cube.data.shape[:2]
    tiles = F.plan_tiles(H, W, runner.window, spec, runner.multiple)
    first = tiles[0]
    shapes = runner.probe(first.h, first.w)[1]
    grids = plan_grids(tiles, H, W, runner.window, spec.stages, shapes)
    maps = open_maps(grids)
    pacer, done = Pacer(), 0
    for i, tile in enumerate(tiles):
        cells = [owned(tile, g, H, W) for g in grids]
        offsets = [
            (tile.r0 // g.factor - g.rows[0], tile.c0 // g.factor - g.cols[0]) for g in grids
        ]

        def each(ti: slice, k: int, m: torch.Tensor, cells=cells, offsets=offsets) -> float:
            rs, cs = cells[k]
            dr, dc = offsets[k]
            crop = m[:, :, rs.start - dr : rs.stop - dr, cs.start - dc : cs.stop - dc]
            maps[k][rs, cs, ti] = crop.permute(2, 3, 0, 1).to(torch.float16).cpu().numpy()
            return float(crop.numel())

        n = (tile.rows[1] - tile.rows[0]) * (tile.cols[1] - tile.cols[0])
        work = F._iter_tile_maps(runner, model, cube, tile, each)
        flops = F._tile_flops(runner, tile, post=False)
        where = {"tile": i, "tiles": len(tiles)}
        yield from paced(work, pacer, flops, (done, done + n), H * W, **where)
        done += n
    return grids


def axis_weights(
    pos: np.ndarray, grid_cells: tuple[int, int], factor: int, window: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """Along one axis, at the scene positions ``pos``: the rows of the bilinear upsampling
    (``F.interpolate``, ``align_corners=False``, clamped at the stored map's ends as at a
    tile's) and of the mean of the upsampled axis over each position's window (position at
    index ``window // 2``) -> (first cell, centre (n, k), global (n, k)) over ``k`` cells."""
    a, b = grid_cells

    def taps(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((u + 0.5) / factor - 0.5, a)
        i0 = np.minimum(np.floor(src).astype(np.int64), b - 1)
        return i0, np.minimum(i0 + 1, b - 1), src - i0

    pos = np.asarray(pos, np.int64)
    u = pos[:, None] - window // 2 + np.arange(window)
    g0, g1, gl = taps(u)
    c0_, c1_, cl = taps(pos)
    lo = int(min(g0.min(), c0_.min()))
    k = int(max(g1.max(), c1_.max())) + 1 - lo
    n, rows = len(pos), np.arange(len(pos))
    centre, glob = np.zeros((n, k)), np.zeros((n, k))
    np.add.at(centre, (rows, c0_ - lo), 1 - cl)
    np.add.at(centre, (rows, c1_ - lo), cl)
    np.add.at(glob, (np.repeat(rows, window), (g0 - lo).ravel()), (1 - gl).ravel() / window)
    np.add.at(glob, (np.repeat(rows, window), (g1 - lo).ravel()), gl.ravel() / window)
    return lo, centre.astype(np.float32), glob.astype(np.float32)


def form(
    stored: np.ndarray,
    grid: StageGrid,
    rows: np.ndarray,
    cols: np.ndarray,
    window: int,
    out: tuple[torch.Tensor, torch.Tensor],
    select: tuple = (),
) -> None:
    """Centre and global features of one stage at the pixels ``rows x cols`` (scene positions)
    into ``out``, two (n_rows, n_cols, T, Cs) tensors, from the stored cells they need.
    ``select`` indexes the timesteps and channels (all by default).

    The rows' operators are applied to all the columns' cells at once (one matrix product),
    the columns' ones ``_COLS`` output columns at a time, each over the cells it reaches: dense
    operators, but no wider than a window and a block."""
    import torch

    r0, rc, rg = axis_weights(rows, grid.rows, grid.factor, window)
    c0, cc, cg = axis_weights(cols, grid.cols, grid.factor, window)
    kr, kc = rc.shape[1], cc.shape[1]
    i, j = r0 - grid.rows[0], c0 - grid.cols[0]
    x = stored[i : i + kr, j : j + kc]
    for axis, index in enumerate(select):
        x = x[(slice(None),) * (2 + axis) + (index,)]
    x16 = torch.from_numpy(x)
    x = x16.to(torch.float32, memory_format=torch.contiguous_format)
    nt, cs = x.shape[2:]
    x = x.view(kr, kc * nt * cs)
    nr = len(rows)
    if grid.factor == 1:  # full resolution: the centre is the stored value
        out[0].copy_(_take(_take(x16, rows - r0, 0), cols - c0, 1))
        glob = torch.from_numpy(rg) @ x
        parts = [(out[1], cg, glob)]
    else:
        both = torch.from_numpy(np.concatenate([rc, rg])) @ x
        parts = [(out[0], cc, both[:nr]), (out[1], cg, both[nr:])]
    for dest, weights, reduced in parts:
        reduced = reduced.view(nr, kc, -1)
        for s in range(0, len(cols), _COLS):
            w = weights[s : s + _COLS]
            reach = np.flatnonzero(w.any(0))
            a, b = int(reach[0]), int(reach[-1]) + 1
            block = torch.matmul(torch.from_numpy(w[:, a:b]), reduced[:, a:b])
            dest[:, s : s + _COLS].copy_(block.view(nr, -1, nt, cs))


def _take(x: torch.Tensor, index: np.ndarray, dim: int) -> torch.Tensor:
    """``x`` at ``index`` along ``dim``: a view when the index is a run of positions."""
    import torch

    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return x.narrow(dim, int(index[0]), len(index))
    return x.index_select(dim, torch.from_numpy(index))
