"""How much a pixel's dense features depend on the tile it was computed in.

GroupNorm and the middle self-attention see the whole tile, so a pixel's dense features change
with the tile's size and placement. For each tile size (and margin), this computes the features of
a fixed sample of Indian Pines pixels with the scene cut into tiles of that size, and with the
same tiling shifted by half a core (so every pixel lands elsewhere in its tile), and compares both
with the features computed with the whole scene in one tile. It also times each tiling.

    .venv/bin/python benchmarks/tiling.py --model MODEL_DIR --json out/tiling.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from napari_mtmsd._progress import run
from napari_mtmsd.features import FeatureSpec, Tile, iter_scene, plan_tiles
from napari_mtmsd.model import DiffusionModel
from napari_mtmsd.samples import load_indian_pines


def scene_features(model, cube, spec, shift: int = 0) -> tuple[np.ndarray, float]:
    """Whole-scene centre+global features (H, W, T, 2D) float32 with tiles shifted by ``shift``."""
    import napari_mtmsd.features as F

    H, W = cube.data.shape[:2]
    out = None

    def sink(tile: Tile, c: np.ndarray, g: np.ndarray) -> None:
        nonlocal out
        if out is None:
            out = np.zeros((H, W, c.shape[2], 2 * c.shape[3]), np.float32)
        out[slice(*tile.rows), slice(*tile.cols)] = np.concatenate([c, g], -1)

    original = F.plan_tiles

    def shifted(h, w, window, spec, multiple):
        tiles = original(h + shift, w + shift, window, spec, multiple)
        moved = []
        for t in tiles:
            rows = (max(t.rows[0] - shift, 0), min(t.rows[1] - shift, h))
            cols = (max(t.cols[0] - shift, 0), min(t.cols[1] - shift, w))
            if rows[0] < rows[1] and cols[0] < cols[1]:
                moved.append(Tile(t.r0 - shift, t.c0 - shift, t.h, t.w, rows, cols))
        return moved

    F.plan_tiles = shifted if shift else original
    try:
        t0 = time.perf_counter()
        run(iter_scene(model, cube, spec, sink, "cpu"))
        return out, time.perf_counter() - t0
    finally:
        F.plan_tiles = original


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Median cosine similarity and median relative L2 difference per (pixel, timestep)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    cos = (a * b).sum(-1) / (na * nb + 1e-12)
    rel = np.linalg.norm(a - b, axis=-1) / (nb + 1e-12)
    return float(np.median(cos)), float(np.median(rel))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tiles", default="96,128,192")
    ap.add_argument("--margins", default="0,16")
    ap.add_argument("--timesteps", default="100,500,900")
    ap.add_argument("--json")
    a = ap.parse_args()
    cube, _ = load_indian_pines()
    model = DiffusionModel.load(a.model)
    ts = tuple(int(t) for t in a.timesteps.split(","))
    base = FeatureSpec(timesteps=ts, tile=1024, noise_draws=1)
    ref, t_ref = scene_features(model, cube, base)
    rows = [{"tile": "whole scene", "margin": base.margin, "tiles": 1, "time_s": round(t_ref, 2)}]
    for tile in (int(t) for t in a.tiles.split(",")):
        for margin in (int(m) for m in a.margins.split(",")):
            spec = dataclasses.replace(base, tile=tile, margin=margin)
            n = len(plan_tiles(*cube.data.shape[:2], model.patch_size, spec,
                               model.unet.config.size_multiple))
            f, t = scene_features(model, cube, spec)
            core = tile - 2 * (model.patch_size // 2 + margin)
            g, _ = scene_features(model, cube, spec, shift=core // 2)
            cos, rel = similarity(f, ref)
            cos_s, rel_s = similarity(f, g)
            rows.append({"tile": tile, "margin": margin, "tiles": n, "time_s": round(t, 2),
                         "cos_vs_whole": round(cos, 4), "rel_diff_vs_whole": round(rel, 4),
                         "cos_vs_shifted": round(cos_s, 4), "rel_diff_vs_shifted": round(rel_s, 4)})
    cols = ["tile", "margin", "tiles", "time_s", "cos_vs_whole", "rel_diff_vs_whole",
            "cos_vs_shifted", "rel_diff_vs_shifted"]
    print("  ".join(f"{c:>18}" for c in cols))
    for r in rows:
        print("  ".join(f"{r.get(c, ''):>18}" for c in cols))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"model": a.model, "timesteps": ts, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
