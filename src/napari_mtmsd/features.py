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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._progress import Progress, forward
from .errors import InputError

if TYPE_CHECKING:
    import torch

    from .io import Cube
    from .model import DiffusionModel

DEFAULT_TIMESTEPS: tuple[int, ...] = tuple(range(50, 1000, 50))
DEFAULT_STAGES: tuple[int, ...] = (0, 1, 2, 3, 5)
_NOISE_BLOCK = 64  # the dense noise field is drawn in blocks of this size, each from its own seed


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What a feature is and how it is computed. Everything here enters the cache key.

    ``tile`` is the dense U-Net input size (pixels, rounded up to the U-Net's stride); ``margin``
    the context kept beyond each pixel's window inside a tile; ``bf16`` allows bf16 autocast
    where it pays (see ``device.use_bf16``; features then differ from fp32 in the third digit).
    ``noise_draws`` noise fields are averaged, at that many U-Net passes: the paper draws one;
    three gave 0.1-0.25 points more OA on Indian Pines (docs/features.md, "Noise draws").
    """

    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    stages: tuple[int, ...] = DEFAULT_STAGES
    mode: Literal["dense", "patch"] = "dense"
    tile: int = 256
    margin: int = 16
    noise_seed: int = 0
    bf16: bool = True
    noise_draws: int = 3

    def __post_init__(self) -> None:
        if self.mode not in ("dense", "patch"):
            raise InputError(f"feature mode must be 'dense' or 'patch', not {self.mode!r}")
        if not self.timesteps or not self.stages:
            raise InputError("at least one timestep and one stage are needed")
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        if int(self.noise_draws) < 1:
            raise InputError(f"noise_draws must be at least 1, got {self.noise_draws}")
        object.__setattr__(self, "noise_draws", int(self.noise_draws))
        if self.tile < 16 or self.margin < 0:
            raise InputError(
                f"tile must be >= 16 and margin >= 0 (got tile={self.tile}, margin={self.margin})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        d = {"noise_draws": 1, **d}  # written before noise_draws existed: one draw
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def validate(self, model: DiffusionModel) -> None:
        T = model.schedule.T
        bad_t = [t for t in self.timesteps if not 0 <= t < T]
        if bad_t:
            raise InputError(f"timesteps {bad_t} are outside the schedule's range 0..{T - 1}")
        n_blocks = len(model.unet.output_blocks)
        bad_s = [s for s in self.stages if not 0 <= s < n_blocks]
        if bad_s:
            raise InputError(
                f"stages {bad_s} do not exist: this U-Net has decoder blocks 0..{n_blocks - 1}"
            )


def effective_bf16(
    model: DiffusionModel, spec: FeatureSpec, device: str | torch.device = "auto"
) -> bool:
    """Whether features are computed under bf16 autocast: allowed by ``spec.bf16`` and paying on
    this device for this network (``device.use_bf16``). Part of the cache key."""
    from .device import resolve_device, use_bf16

    dev = resolve_device(device) if isinstance(device, str) else device
    return bool(spec.bf16 and use_bf16(dev, model.unet.config.model_channels))


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


# --------------------------------------------------------------------------------------------
# The U-Net pass: noised inputs at every timestep -> upsampled stage maps -> centre and global.


def _axis_operators(
    n_in: int, n_out: int, served: slice, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one axis of a tile: the rows of the bilinear upsampling ``n_in -> n_out``
    (``F.interpolate``, ``align_corners=False``) at the served pixels, and of the mean of that
    upsampled axis over each served pixel's ``window``: two ``(n_served, n_in)`` matrices.

    Upsampling and box mean are linear and separable, so a stage map ``M (.., n_in, n_in)``
    gives its centre features as ``Rc M Cc^T`` and its global features as ``Rg M Cg^T``: small
    matrix products that never build the full-size upsampled map (most of a tile's work
    otherwise: a 228 x 228 map of every channel, for 145 x 145 served pixels).
    """
    import torch
    import torch.nn.functional as F

    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(0)  # source positions as channels
    up = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T  # (n_out, n_in)
    c = F.pad(up.cumsum(0), (0, 0, 1, 0))
    box = (c[window:] - c[:-window]) / window  # row j: mean of upsampled rows j .. j + window - 1
    start = served.start - window // 2  # a served pixel's window starts window // 2 before it
    glob = box[start : start + served.stop - served.start]
    return up[served].float(), glob.float()


def _separable(m: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows M cols^T`` for every map of ``m (nt, Cs, hs, ws)``, as an ``(h, w, nt, Cs)`` view
    (the caller's one copy into the feature array does the transpose).

    Computed channels-last (the U-Net's own layout), rows first: one large matmul per
    timestep, then a batched one; 1.6x faster than along the contiguous layout here.
    """
    import torch

    nt, cs, hs, ws = m.shape
    m = m.permute(0, 2, 3, 1).float()  # (nt, hs, ws, Cs): contiguous for a channels-last map
    t = torch.stack([rows @ m[i].reshape(hs, ws * cs) for i in range(nt)])  # (nt, h, ws * Cs)
    t = t.view(nt, rows.shape[0], ws, cs)
    return torch.matmul(cols, t).permute(1, 2, 0, 3)  # (nt, h, w, Cs) -> (h, w, nt, Cs)


class _Runner:
    """Runs the U-Net for one spec on one device: timesteps batched under a memory budget,
    bf16 autocast where it pays, channels-last."""

    def __init__(
        self,
        model: DiffusionModel,
        spec: FeatureSpec,
        device: str | torch.device,
        memory_mb: float = 2048,
    ):
        import torch

        from .device import ThreadTuner, resolve_device

        spec.validate(model)
        self.model, self.spec, self.memory_mb = model, spec, memory_mb
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.bf16 = effective_bf16(model, spec, self.device)
        self.unet = model.unet.to(self.device).eval()
        self.window = int(model.patch_size)
        ab = torch.as_tensor(np.asarray(model.schedule.alphas_cumprod), dtype=torch.float64)
        t = torch.as_tensor(spec.timesteps)
        self.sqrt_ab = ab[t].sqrt().float().to(self.device)
        self.sqrt_1mab = (1 - ab[t]).sqrt().float().to(self.device)
        self.t = t.to(self.device)
        self.channels = list(model.unet.stage_channels(spec.stages))
        self.D = sum(self.channels)
        self.multiple = 2 ** (len(model.unet.config.channel_mult) - 1)
        self.tuner = ThreadTuner.for_device(self.device, probe=1, warmup=0)  # steps are long

    def batch(self, n_images: int, h: int, w: int) -> int:
        """Timesteps per forward pass so that activations and one upsampled stage fit the budget.

        Per noised image: the U-Net keeps ~3 skip tensors per resolution level plus a few working
        ones (~16 maps of ``model_channels`` at full size, in bf16 or fp32), and the float32
        upsampled stage with its box-mean temporaries (~3 maps of the widest stage).
        """
        mc = self.model.unet.config.model_channels
        per_image = h * w * 4 * (16 * mc + 3 * max(self.channels))
        fit = int(self.memory_mb * 2**20 // max(per_image * n_images, 1))
        return max(1, min(len(self.spec.timesteps), fit))

    def stage_maps(self, x0: torch.Tensor, noise: torch.Tensor, ti: slice) -> list[torch.Tensor]:
        """x0, noise (n, C, h, w); timesteps ``ti`` -> raw stage outputs, (n * nt, Cs, hs, ws) each."""
        import torch

        from .device import autocast

        n = x0.shape[0]
        nt = ti.stop - ti.start
        self.tuner.tick(n * nt * x0.shape[-2] * x0.shape[-1])
        a = self.sqrt_ab[ti].view(1, nt, 1, 1, 1)
        b = self.sqrt_1mab[ti].view(1, nt, 1, 1, 1)
        xt = (a * x0[:, None] + b * noise[:, None]).flatten(0, 1)
        t = self.t[ti].repeat(n)
        xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, enabled=self.bf16):
            return self.unet.forward_features(xt, t, self.spec.stages)


def _mean_over_draws(m: torch.Tensor, draws: int) -> torch.Tensor:
    """Stage maps of ``draws`` noise draws, draw-major ``(draws * k, Cs, hs, ws)`` -> their mean
    ``(k, Cs, hs, ws)`` in float32, in the maps' memory format (channels-last)."""
    import torch

    if draws == 1:
        return m
    parts = m.view(draws, -1, *m.shape[1:])
    mean = parts[0].to(torch.float32, copy=True)
    for part in parts[1:]:
        mean.add_(part)
    return mean.div_(draws)


def _upsample(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    import torch.nn.functional as F

    return F.interpolate(m.float(), size=(h, w), mode="bilinear", align_corners=False)


def _iter_patch_features(
    runner: _Runner, model: DiffusionModel, cube: Cube, coords: np.ndarray, chunk: int = 32
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """The reference: one window per pixel (pixel at index window // 2), one fixed noise patch
    (per draw)."""
    import torch

    spec, P, draws = runner.spec, runner.window, runner.spec.noise_draws
    nT = len(spec.timesteps)
    noise1 = [
        torch.randn((model.n_components, P, P), generator=torch.Generator().manual_seed(seed))
        for seed in range(spec.noise_seed, spec.noise_seed + draws)
    ]
    centre = np.empty((len(coords), nT, runner.D), np.float16)
    glob = np.empty_like(centre)
    bt = runner.batch(chunk * draws, P, P)
    total = math.ceil(len(coords) / chunk) * math.ceil(nT / bt)
    step = 0
    for i in range(0, len(coords), chunk):
        cs = coords[i : i + chunk]
        n = len(cs)
        x0 = np.stack([read_window(model, cube, r - P // 2, c - P // 2, P, P) for r, c in cs])
        x0 = torch.from_numpy(x0).to(runner.device).repeat(draws, 1, 1, 1)  # draw-major
        noise = torch.cat([z.expand(n, -1, -1, -1) for z in noise1]).to(runner.device)
        for t0 in range(0, nT, bt):
            ti = slice(t0, min(t0 + bt, nT))
            d0 = 0
            for m in runner.stage_maps(x0, noise, ti):
                up = _upsample(_mean_over_draws(m, draws), P, P).view(
                    n, ti.stop - t0, m.shape[1], P, P
                )
                d1 = d0 + m.shape[1]
                centre[i : i + n, ti, d0:d1] = up[..., P // 2, P // 2].cpu().numpy()
                glob[i : i + n, ti, d0:d1] = up.mean((-2, -1)).cpu().numpy()
                d0 = d1
            step += 1
            yield {"stage": "features", "step": step, "total": total, "mode": "patch"}
    return centre, glob


# --------------------------------------------------------------------------------------------
# Dense tiling.


@dataclasses.dataclass(frozen=True)
class Tile:
    """A dense tile: U-Net input at scene (r0, c0) of size (h, w); it serves the scene pixels
    rows[0]:rows[1], cols[0]:cols[1]."""

    r0: int
    c0: int
    h: int
    w: int
    rows: tuple[int, int]
    cols: tuple[int, int]


def plan_tiles(
    height: int, width: int, window: int, spec: FeatureSpec, multiple: int
) -> list[Tile]:
    """Cover the scene with tiles whose served pixels have their whole window plus ``margin``
    inside the tile. A scene that fits in one tile gets exactly one (no redundant work)."""
    halo = window // 2 + spec.margin

    def axis(n: int) -> list[tuple[int, int, int]]:
        size = n + 2 * halo
        size = -(-size // multiple) * multiple
        if size <= spec.tile:
            return [(-halo, size, 0)]
        tile = -(-spec.tile // multiple) * multiple
        core = tile - 2 * halo
        if core < multiple:
            raise InputError(
                f"tile {spec.tile} is too small for window {window} and margin {spec.margin}: "
                f"use a tile of at least {2 * halo + 4 * multiple}"
            )
        return [(s - halo, tile, s) for s in range(0, n, core)]

    tiles = []
    for r0, h, rs in axis(height):
        for c0, w, cs in axis(width):
            core_h = h - 2 * halo
            core_w = w - 2 * halo
            tiles.append(
                Tile(r0, c0, h, w, (rs, min(rs + core_h, height)), (cs, min(cs + core_w, width)))
            )
    return tiles


def _iter_tile(
    runner: _Runner, model: DiffusionModel, cube: Cube, tile: Tile, mask: np.ndarray | None = None
) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Features of the pixels a tile serves -> centre, glob (h, w, T, D) float16.

    ``mask`` (h, w) limits the returned rows to the pixels wanted (then arrays are (n, T, D)).
    """
    import torch

    spec, P, draws = runner.spec, runner.window, runner.spec.noise_draws
    nT = len(spec.timesteps)
    x0 = read_window(model, cube, tile.r0, tile.c0, tile.h, tile.w)
    seeds = range(spec.noise_seed, spec.noise_seed + draws)
    noise = np.stack(
        [noise_field(x0.shape[0], tile.r0, tile.c0, tile.h, tile.w, s) for s in seeds]
    )
    x0 = torch.from_numpy(x0)[None].to(runner.device).expand(draws, -1, -1, -1)
    noise = torch.from_numpy(noise).to(runner.device)
    # served pixel p (scene) is at tile index p - r0; its window starts at p - r0 - P // 2
    ri = slice(tile.rows[0] - tile.r0, tile.rows[1] - tile.r0)
    ci = slice(tile.cols[0] - tile.c0, tile.cols[1] - tile.c0)
    h, w = ri.stop - ri.start, ci.stop - ci.start
    shape = (h, w, nT, runner.D) if mask is None else (int(mask.sum()), nT, runner.D)
    centre = np.empty(shape, np.float16)
    glob = np.empty(shape, np.float16)
    outputs = (torch.from_numpy(centre), torch.from_numpy(glob))  # views: writes land in both
    sel = None if mask is None else torch.from_numpy(mask.reshape(-1)).to(runner.device)
    bt = runner.batch(draws, tile.h, tile.w)
    n_batches = math.ceil(nT / bt)
    ops: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}  # (hs, ws) -> Rc, Rg, Cc, Cg
    for k, t0 in enumerate(range(0, nT, bt)):
        ti = slice(t0, min(t0 + bt, nT))
        d0 = 0
        for m in runner.stage_maps(x0, noise, ti):
            m = _mean_over_draws(m, draws)
            hs, ws = m.shape[-2:]
            if (hs, ws) not in ops:
                r = _axis_operators(hs, tile.h, ri, P)
                c = _axis_operators(ws, tile.w, ci, P)
                ops[hs, ws] = tuple(o.to(runner.device) for o in (*r, *c))
            rc, rg, cc, cg = ops[hs, ws]
            d1 = d0 + m.shape[1]
            full_size = (hs, ws) == (tile.h, tile.w)  # then the centre is a plain crop
            for out, glob_ in zip(outputs, (False, True), strict=True):
                if full_size and not glob_:
                    f = m[:, :, ri, ci].permute(2, 3, 0, 1)
                else:
                    f = _separable(m, rg, cg) if glob_ else _separable(m, rc, cc)
                if sel is not None:
                    f = f.reshape(h * w, *f.shape[2:])[sel]
                out[..., ti, d0:d1].copy_(f)  # transpose, float16 and store in one pass
            d0 = d1
        yield {"stage": "features", "step": k + 1, "total": n_batches}
    return centre, glob


def iter_scene(
    model: DiffusionModel,
    cube: Cube,
    spec: FeatureSpec,
    sink: Callable[[Tile, np.ndarray, np.ndarray], None],
    device: str | torch.device = "auto",
    memory_mb: float = 2048,
) -> Generator[Progress, None, None]:
    """Dense features of every pixel, tile by tile, each handed to ``sink(tile, centre, glob)``."""
    if spec.mode != "dense":
        raise InputError("whole-scene features use mode='dense'; 'patch' is for sampled pixels")
    runner = _Runner(model, spec, device, memory_mb)
    H, W = cube.data.shape[:2]
    tiles = plan_tiles(H, W, runner.window, spec, runner.multiple)
    for i, tile in enumerate(tiles):
        centre, glob = yield from forward(
            _iter_tile(runner, model, cube, tile), tile=i, tiles=len(tiles)
        )
        sink(tile, centre, glob)


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
    working memory of one forward pass (it sets how many timesteps run together).
    """
    spec = spec or FeatureSpec()
    coords = _check_coords(coords, cube)
    runner = _Runner(model, spec, device, memory_mb)
    if spec.mode == "patch":
        return (yield from _iter_patch_features(runner, model, cube, coords))
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
    for i, (tile, idx) in enumerate(todo):
        h, w = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
        local = np.zeros((h, w), bool)
        local[coords[idx, 0] - tile.rows[0], coords[idx, 1] - tile.cols[0]] = True
        c, g = yield from forward(
            _iter_tile(runner, model, cube, tile, local), tile=i, tiles=len(todo)
        )
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
    from ._progress import run

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
    from ._progress import run

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
