"""Multi-timestep multi-stage diffusion features (MTMSD section 3), dense or per patch.

A pixel's feature is read from the denoising U-Net fed with the pixel's neighbourhood noised to
timestep t: for each timestep and each decoder block ("stage"), the block output upsampled
bilinearly to full resolution gives a **centre** vector (the value at the pixel) and a **global**
vector (the mean over the ``window x window`` neighbourhood, the pixel at index ``window // 2``).

``mode="patch"`` is the authors' reference: one ``window``-sized patch per pixel, one fixed noise
patch for every pixel and timestep. ``mode="dense"`` (default) runs the fully convolutional U-Net
once over large overlapping tiles of the reflect-padded scene and serves every pixel of a tile at
once: about a thousand times less arithmetic. Its noise is a fixed field over the padded scene,
generated block by block from the seed, so a pixel's features do not depend on the order of work.
With ``noise_draws > 1`` the features of that many noise fields (seeds ``noise_seed``,
``noise_seed + 1``, ...) are averaged: an estimate of the expected feature at each timestep
rather than of one draw (both modes).
Each pixel is taken from a tile where it lies at least ``margin`` pixels inside the part whose
neighbourhood window fits in the tile, so U-Net edge effects stay away from the features.

Memory is bounded by the tile: the cube is read and preprocessed one tile at a time, and each
tile's features go to a sink (an on-disk cache, a classifier) before the next tile is computed.
Time is cut finer than the tile: passes pause after each U-Net layer and are sized so that a
layer takes a fraction of a second, so progress records (and a napari Stop) come at least once a
second (docs/features.md, "Progress and Stop").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from . import _unet_passes as passes
from ._feature_spec import DEFAULT_STAGES as DEFAULT_STAGES
from ._feature_spec import DEFAULT_TIMESTEPS as DEFAULT_TIMESTEPS
from ._feature_spec import FeatureSpec as FeatureSpec
from ._progress import Pacer, Progress, paced, run
from ._tiles import Tile as Tile
from ._tiles import plan_tiles as plan_tiles
from ._unet_passes import effective_bf16 as effective_bf16
from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .io import Cube
    from .model import DiffusionModel

_NOISE_BLOCK = 64  # the dense noise field is drawn in blocks of this size, each from its own seed


def feature_dim(model: DiffusionModel, spec: FeatureSpec) -> int:
    """Channels per timestep (D): the stage channels concatenated."""
    return int(sum(model.unet.stage_channels(spec.stages)))


# --------------------------------------------------------------------------------------------
# Reading the cube a window at a time, with reflect padding, already preprocessed.


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices into 0..n-1 (numpy's 'reflect' mode, repeated for any distance)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


def read_window(model: DiffusionModel, cube: Cube, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """Preprocessed (C, h, w) float32 window whose top-left is scene pixel (r0, c0).

    Pixels outside the scene are reflected in; invalid pixels (NaN, ignore value) become 0,
    the mean of the standardised components.
    """
    H, W = cube.data.shape[:2]
    rows = _reflect(np.arange(r0, r0 + h), H)
    cols = _reflect(np.arange(c0, c0 + w), W)
    r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
    c_lo, c_hi = int(cols.min()), int(cols.max()) + 1
    block = np.asarray(cube.data[r_lo:r_hi, c_lo:c_hi])
    block = block[rows - r_lo][:, cols - c_lo]
    x = model.prepare(dataclasses.replace(cube, data=block, wavelengths=None))
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def noise_field(C: int, r0: int, c0: int, h: int, w: int, seed: int) -> np.ndarray:
    """The fixed (C, h, w) noise at scene rows r0.., cols c0.. (any sign): same values whatever the tiling."""
    B = _NOISE_BLOCK
    out = np.empty((C, h, w), np.float32)
    off = 1 << 24  # SeedSequence needs non-negative entries; block indices may be negative
    for bi in range(math.floor(r0 / B), math.floor((r0 + h - 1) / B) + 1):
        for bj in range(math.floor(c0 / B), math.floor((c0 + w - 1) / B) + 1):
            rng = np.random.default_rng([seed, C, bi + off, bj + off])
            block = rng.standard_normal((C, B, B), dtype=np.float32)
            rs, re = max(r0, bi * B), min(r0 + h, (bi + 1) * B)
            cs, ce = max(c0, bj * B), min(c0 + w, (bj + 1) * B)
            out[:, rs - r0 : re - r0, cs - c0 : ce - c0] = block[
                :, rs - bi * B : re - bi * B, cs - bj * B : ce - bj * B
            ]
    return out


def _iter_patch_features(
    runner: passes.Runner, model: DiffusionModel, cube: Cube, coords: np.ndarray
) -> Generator[float, None, tuple[np.ndarray, np.ndarray]]:
    """The reference: one window per pixel (pixel at index window // 2), one fixed noise patch
    (per draw). Yields FLOPs of work as they are done."""
    import torch

    spec, P, draws = runner.spec, runner.window, runner.spec.noise_draws
    nT = len(spec.timesteps)
    noise1 = [
        torch.randn((model.n_components, P, P), generator=torch.Generator().manual_seed(seed))
        for seed in range(spec.noise_seed, spec.noise_seed + draws)
    ]
    centre = np.empty((len(coords), nT, runner.D), np.float16)
    glob = np.empty_like(centre)
    fit = runner.images_per_pass(P, P)
    chunk = min(32, max(1, fit // draws))
    bt = max(1, min(runner.batch(chunk * draws, P, P), fit // (chunk * draws)))
    for i in range(0, len(coords), chunk):
        cs = coords[i : i + chunk]
        n = len(cs)
        x0 = np.stack([read_window(model, cube, r - P // 2, c - P // 2, P, P) for r, c in cs])
        x0 = torch.from_numpy(x0).to(runner.device).repeat(draws, 1, 1, 1)  # draw-major
        noise = torch.cat([z.expand(n, -1, -1, -1) for z in noise1]).to(runner.device)
        for t0 in range(0, nT, bt):
            ti = slice(t0, min(t0 + bt, nT))
            d0 = 0
            for m in (yield from runner.iter_stage_maps(x0, noise, ti)):
                up = passes.upsample(passes.mean_over_draws(m, draws), P, P).view(
                    n, ti.stop - t0, m.shape[1], P, P
                )
                d1 = d0 + m.shape[1]
                centre[i : i + n, ti, d0:d1] = up[..., P // 2, P // 2].cpu().numpy()
                glob[i : i + n, ti, d0:d1] = up.mean((-2, -1)).cpu().numpy()
                d0 = d1
    return centre, glob


# --------------------------------------------------------------------------------------------
# Dense tiling.


def _iter_empty(
    shape: tuple[int, ...], chunk_bytes: int = 32 << 20
) -> Generator[float, None, np.ndarray]:
    """A float16 array whose memory is touched a chunk at a time. Fresh memory costs when first
    written (the kernel zeroes each page, ~1 s per GB on this project's machine), and the first
    timestep's features touch every page of a tile's arrays at once: seconds inside one step
    for the ``paper`` preset's 2 GB, unless paid here between pauses. Yields no FLOPs."""
    out = np.empty(shape, np.float16)
    flat = out.reshape(-1)
    step = max(1, chunk_bytes // flat.itemsize)
    for i in range(0, flat.size, step):
        flat[i : i + step] = 0
        yield 0.0
    return out


def _bands(
    tile: Tile, centre: np.ndarray, glob: np.ndarray, max_bytes: int = 32 << 20
) -> Iterator[tuple[Tile, np.ndarray, np.ndarray]]:
    """A tile's features as bands of rows of at most ``max_bytes`` each, for the sink: copying
    a ``paper`` tile's 2 GB into a memory-mapped file at once takes seconds."""
    rows = max(1, max_bytes // max(centre[0].nbytes, 1))
    for r in range(0, centre.shape[0], rows):
        r1 = min(r + rows, centre.shape[0])
        band = dataclasses.replace(tile, rows=(tile.rows[0] + r, tile.rows[0] + r1))
        yield band, centre[r:r1], glob[r:r1]


def _tile_flops(runner: passes.Runner, tile: Tile, post: bool = True) -> float:
    """The work of one tile: every U-Net pass and (``post``) the features read from its stage
    maps (without, the maps are only copied: work too small to count)."""
    layers, stage_shapes = runner.probe(tile.h, tile.w)
    h, w = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
    per_timestep = sum(layers) * runner.spec.noise_draws
    if post:
        per_timestep += passes.post_flops(stage_shapes, h, w)
    return per_timestep * len(runner.spec.timesteps)


def _iter_tile_maps(
    runner: passes.Runner,
    model: DiffusionModel,
    cube: Cube,
    tile: Tile,
    each: Callable[[slice, int, torch.Tensor], float],
) -> Generator[float, None, None]:
    """A tile's U-Net passes: for every batch of timesteps ``ti`` and stage ``k``, the stage map
    averaged over the noise draws, ``m (nt, Cs, hs, ws)`` (float, channels-last), goes to
    ``each(ti, k, m)``, which returns the FLOPs of what it did with it. Yields FLOPs of work as
    it is done. A pass holds the draws and timesteps that fit ``runner.images_per_pass``; the
    draws' stage maps are summed in draw order whether they ran in one pass or several.
    """
    import torch

    spec, draws = runner.spec, runner.spec.noise_draws
    nT = len(spec.timesteps)
    x0 = read_window(model, cube, tile.r0, tile.c0, tile.h, tile.w)
    seeds = range(spec.noise_seed, spec.noise_seed + draws)
    noise = np.stack(
        [noise_field(x0.shape[0], tile.r0, tile.c0, tile.h, tile.w, s) for s in seeds]
    )
    x0 = torch.from_numpy(x0)[None].to(runner.device).expand(draws, -1, -1, -1)
    noise = torch.from_numpy(noise).to(runner.device)
    fit = runner.images_per_pass(tile.h, tile.w)
    per_pass = min(draws, fit)  # draws per pass
    bt = max(1, min(runner.batch(per_pass, tile.h, tile.w), fit // per_pass))
    for t0 in range(0, nT, bt):
        ti = slice(t0, min(t0 + bt, nT))
        maps: list[torch.Tensor] = []
        for g0 in range(0, draws, per_pass):
            g = slice(g0, min(g0 + per_pass, draws))
            out = yield from runner.iter_stage_maps(x0[g], noise[g], ti)
            if draws == 1:
                maps = out
            else:
                into = maps or [None] * len(out)
                maps = [
                    passes.sum_draws(m, g.stop - g.start, s)
                    for m, s in zip(out, into, strict=True)
                ]
        for k, m in enumerate(maps):
            yield each(ti, k, m.div_(draws) if draws > 1 else m)


def _iter_tile(
    runner: passes.Runner,
    model: DiffusionModel,
    cube: Cube,
    tile: Tile,
    mask: np.ndarray | None = None,
) -> Generator[float, None, tuple[np.ndarray, np.ndarray]]:
    """Features of the pixels a tile serves -> centre, glob (h, w, T, D) float16.

    ``mask`` (h, w) limits the returned rows to the pixels wanted (then arrays are (n, T, D)).
    Yields FLOPs of work as they are done (``_tile_flops`` in all).
    """
    import torch

    P, nT = runner.window, len(runner.spec.timesteps)
    # served pixel p (scene) is at tile index p - r0; its window starts at p - r0 - P // 2
    ri = slice(tile.rows[0] - tile.r0, tile.rows[1] - tile.r0)
    ci = slice(tile.cols[0] - tile.c0, tile.cols[1] - tile.c0)
    h, w = ri.stop - ri.start, ci.stop - ci.start
    shape = (h, w, nT, runner.D) if mask is None else (int(mask.sum()), nT, runner.D)
    centre = yield from _iter_empty(shape)
    glob = yield from _iter_empty(shape)
    outputs = (torch.from_numpy(centre), torch.from_numpy(glob))  # views: writes land in both
    sel = None if mask is None else torch.from_numpy(mask.reshape(-1)).to(runner.device)
    offsets = np.cumsum([0, *runner.channels])
    ops: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}  # (hs, ws) -> Rc, Rg, Cc, Cg

    def each(ti: slice, k: int, m: torch.Tensor) -> float:
        hs, ws = m.shape[-2:]
        if (hs, ws) not in ops:
            r = passes.axis_operators(hs, tile.h, ri, P)
            c = passes.axis_operators(ws, tile.w, ci, P)
            ops[hs, ws] = tuple(o.to(runner.device) for o in (*r, *c))
        rc, rg, cc, cg = ops[hs, ws]
        d0, d1 = offsets[k], offsets[k + 1]
        full_size = (hs, ws) == (tile.h, tile.w)  # then the centre is a plain crop
        for out, glob_ in zip(outputs, (False, True), strict=True):
            if full_size and not glob_:
                f = m[:, :, ri, ci].permute(2, 3, 0, 1)
            else:
                f = passes.separable(m, rg, cg) if glob_ else passes.separable(m, rc, cc)
            if sel is not None:
                f = f.reshape(h * w, *f.shape[2:])[sel]
            out[..., ti, d0:d1].copy_(f)  # transpose, float16 and store in one pass
        return passes.post_flops([(d1 - d0, hs, ws)], h, w) * (ti.stop - ti.start)

    yield from _iter_tile_maps(runner, model, cube, tile, each)
    return centre, glob


def iter_scene(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec,
    sink: Callable[[Tile, np.ndarray, np.ndarray], None],
    device: str | torch.device = "auto",
    memory_mb: float = 2048,
) -> Generator[Progress, None, None]:
    """Dense features of every pixel, tile by tile, each handed to ``sink(tile, centre, glob)``
    in bands of rows (``tile.rows`` narrowed to the band).

    Records count pixels: ``step`` of ``total`` (H x W), moving within a tile as its work gets
    done, at least every ``Pacer`` interval plus one U-Net layer (docs/features.md, "Progress").
    """
    if spec.mode != "dense":
        raise InputError("whole-scene features use mode='dense'; 'patch' is for sampled pixels")
    runner = passes.Runner(model, spec, device, memory_mb)
    H, W = cube.data.shape[:2]
    tiles = plan_tiles(H, W, runner.window, spec, runner.multiple)
    pacer, done = Pacer(), 0
    for i, tile in enumerate(tiles):
        n = (tile.rows[1] - tile.rows[0]) * (tile.cols[1] - tile.cols[0])
        where = {"tile": i, "tiles": len(tiles)}
        work = _iter_tile(runner, model, cube, tile)
        flops = _tile_flops(runner, tile)
        centre, glob = yield from paced(work, pacer, flops, (done, done + n), H * W, **where)
        done += n
        for band in _bands(tile, centre, glob):
            sink(*band)
            if pacer.due():
                yield {"stage": "features", "step": done, "total": H * W, **where}


def iter_extract_pixels(
    model: DiffusionModel,
    cube: Cube,
    coords: np.ndarray,
    spec: FeatureSpec | None = None,
    device: str | torch.device = "auto",
    memory_mb: float = 2048,
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Features of the pixels at ``coords`` (N, 2) -> centre, glob (N, T, D) float16.

    Dense mode computes only the tiles that serve a wanted pixel. ``memory_mb`` bounds the
    working memory of one forward pass (it sets how many timesteps run together). Records count
    the pixels computed: the wanted ones (patch), the served pixels of the tiles run (dense).
    """
    spec = spec or FeatureSpec()
    coords = _check_coords(coords, cube)
    runner = passes.Runner(model, spec, device, memory_mb)
    pacer = Pacer()
    if spec.mode == "patch":
        P = runner.window
        flops = len(coords) * spec.noise_draws * len(spec.timesteps) * sum(runner.probe(P, P)[0])
        work = _iter_patch_features(runner, model, cube, coords)
        n = len(coords)
        return (yield from paced(work, pacer, flops, (0, n), n, mode="patch"))
    H, W = cube.data.shape[:2]
    centre = np.empty((len(coords), len(spec.timesteps), runner.D), np.float16)
    glob = np.empty_like(centre)
    tiles = plan_tiles(H, W, runner.window, spec, runner.multiple)
    todo = []
    for tile in tiles:
        inside = (
            (coords[:, 0] >= tile.rows[0])
            & (coords[:, 0] < tile.rows[1])
            & (coords[:, 1] >= tile.cols[0])
            & (coords[:, 1] < tile.cols[1])
        )
        if inside.any():
            todo.append((tile, np.flatnonzero(inside)))
    sizes = [(t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0]) for t, _ in todo]
    done = 0
    for i, ((tile, idx), n) in enumerate(zip(todo, sizes, strict=True)):
        h, w = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
        local = np.zeros((h, w), bool)
        local[coords[idx, 0] - tile.rows[0], coords[idx, 1] - tile.cols[0]] = True
        work = _iter_tile(runner, model, cube, tile, local)
        c, g = yield from paced(
            work, pacer, _tile_flops(runner, tile), (done, done + n), sum(sizes),
            tile=i, tiles=len(todo),
        )  # fmt: skip
        done += n
        # _iter_tile returns the wanted pixels in raster order: match them back to coords
        order = np.flatnonzero(local.reshape(-1))
        flat = (coords[idx, 0] - tile.rows[0]) * w + (coords[idx, 1] - tile.cols[0])
        pos = np.searchsorted(order, flat)
        centre[idx], glob[idx] = c[pos], g[pos]
    return centre, glob


def extract_pixels(
    model: DiffusionModel,
    cube: Cube,
    coords: np.ndarray,
    spec: FeatureSpec | None = None,
    device: str | torch.device = "auto",
    callback: Callable[[Progress], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plain-function form of :func:`iter_extract_pixels`."""

    return run(iter_extract_pixels(model, cube, coords, spec, device), callback)


def feature_map(
    model: DiffusionModel,
    cube: Cube,
    timestep: int,
    stage: int,
    spec: FeatureSpec | None = None,
    device: str | torch.device = "auto",
    kind: Literal["centre", "global"] = "centre",
) -> np.ndarray:
    """One (H, W, C_stage) float32 feature map of the whole scene, for the napari inspector."""

    base = spec or FeatureSpec()
    one = dataclasses.replace(base, timesteps=(int(timestep),), stages=(int(stage),), mode="dense")
    H, W = cube.data.shape[:2]
    out = np.empty((H, W, model.unet.stage_channels([stage])[0]), np.float32)

    def sink(tile: Tile, centre: np.ndarray, glob: np.ndarray) -> None:
        f = centre if kind == "centre" else glob
        out[tile.rows[0] : tile.rows[1], tile.cols[0] : tile.cols[1]] = f[:, :, 0]

    run(iter_scene(model, cube, one, sink, device))
    return out


def _check_coords(coords: Sequence | np.ndarray, cube: Cube) -> np.ndarray:
    coords = np.asarray(coords)
    H, W = cube.data.shape[:2]
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.issubdtype(coords.dtype, np.integer):
        raise InputError(f"pixel coordinates must be an (N, 2) integer array, got {coords.shape}")
    if len(coords) and (coords.min() < 0 or coords[:, 0].max() >= H or coords[:, 1].max() >= W):
        raise InputError(f"pixel coordinates fall outside the {H} x {W} scene")
    return coords.astype(np.int64)



def iter_tile_features(
    runner: passes.Runner, model: DiffusionModel, cube: Cube, tile: Tile, span: tuple[int, int],
    total: int, stage: str = "features",
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """A tile of :func:`plan_tiles` as :func:`iter_scene` makes it: a unit of ``tiled``."""
    work = _iter_tile(runner, model, cube, tile)
    return (yield from paced(work, Pacer(), _tile_flops(runner, tile), span, total, stage))
