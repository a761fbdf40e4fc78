"""Dense against patch feature extraction on Indian Pines, on one model, in one run.

Times the whole 145 x 145 scene in dense mode and a sample of pixels in the authors' patch mode
(one window per pixel and timestep), counts the arithmetic of both with torch's FlopCounterMode,
measures this machine's matmul GFLOP/s in the same run as the yardstick, and reports how close the
two modes' features are (cosine similarity per stage and timestep on the sampled pixels).

Speed does not depend on the weights, so without ``--model`` the U-Net is freshly initialised
(PCA fitted on the cube); give a pretrained ``--model`` for meaningful similarities.

    .venv/bin/python benchmarks/features.py --preset cpu --json out/features_cpu.json
    .venv/bin/python benchmarks/features.py --preset paper --patch-pixels 64 --json out/features_paper.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from _machine import matmul_gflops
from napari_mtmsd._progress import run
from napari_mtmsd.device import bf16_supported, resolve_device
from napari_mtmsd.features import (
    FeatureSpec,
    effective_bf16,
    iter_extract_pixels,
    iter_scene,
    plan_tiles,
)
from napari_mtmsd.model import DiffusionModel
from napari_mtmsd.preprocess import Preprocessor
from napari_mtmsd.samples import load_indian_pines
from napari_mtmsd.schedule import NoiseSchedule
from napari_mtmsd.unet import PRESETS, UNet


def fresh_model(cube, preset: str, seed: int = 0) -> DiffusionModel:
    cfg = PRESETS[preset]
    torch.manual_seed(seed)
    pre = Preprocessor.fit(cube, cfg.in_channels, seed=seed)
    return DiffusionModel(UNet(cfg), NoiseSchedule("cosine", 1000), pre, {"preset": preset})


def count_flops(model, cube, spec, device) -> float:
    """FLOPs of dense extraction over the whole scene (one pass over every tile)."""
    runner_flops = FlopCounterMode(display=False)
    with runner_flops:
        run(iter_scene(model, cube, spec, lambda *a: None, device))
    return float(runner_flops.get_total_flops())


def patch_flops(model, cube, spec, device, n: int = 2) -> float:
    coords = np.array([[72, 72]] * n)
    counter = FlopCounterMode(display=False)
    with counter:
        run(iter_extract_pixels(model, cube, coords, spec, device))
    return float(counter.get_total_flops()) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu", choices=("cpu", "paper", "tiny"))
    ap.add_argument("--model", help="a pretrained model directory (default: fresh weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--patch-pixels", type=int, default=128, help="pixels timed in patch mode")
    ap.add_argument("--memory-mb", type=float, default=2048)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()

    device = resolve_device(a.device)
    cube, gt = load_indian_pines()
    model = DiffusionModel.load(a.model) if a.model else fresh_model(cube, a.preset)
    preset = model.config.get("preset", a.preset)
    dense = FeatureSpec(noise_draws=1)  # speed per noise draw: the default's 3 take 3x
    patch = FeatureSpec(mode="patch", noise_draws=1)
    H, W = cube.data.shape[:2]
    multiple = model.unet.config.size_multiple
    n_tiles = len(plan_tiles(H, W, model.patch_size, dense, multiple))

    mm32 = matmul_gflops(device, torch.float32)
    mm16 = matmul_gflops(device, torch.bfloat16) if bf16_supported(device) else float("nan")

    flops_dense = count_flops(model, cube, dense, device) / (H * W)
    flops_patch = patch_flops(model, cube, patch, device)

    run(iter_scene(model, cube, dense, lambda *a: None, device, a.memory_mb))  # warm-up
    stamps = [time.perf_counter()]
    run(
        iter_scene(model, cube, dense, lambda *a: None, device, a.memory_mb),
        lambda record: stamps.append(time.perf_counter()),
    )
    stamps.append(time.perf_counter())
    t_dense = stamps[-1] - stamps[0]
    max_gap = float(np.diff(stamps).max())  # how long a Stop could wait (issue 15: < 1 s)

    rng = np.random.default_rng(0)
    labelled = np.argwhere(gt.data > 0)
    coords = labelled[rng.choice(len(labelled), a.patch_pixels, replace=False)]
    run(iter_extract_pixels(model, cube, coords[:8], patch, device, a.memory_mb))  # warm-up
    t0 = time.perf_counter()
    pc, pg = run(iter_extract_pixels(model, cube, coords, patch, device, a.memory_mb))
    t_patch = time.perf_counter() - t0
    dc, dg = run(iter_extract_pixels(model, cube, coords, dense, device, a.memory_mb))

    # cosine similarity dense vs patch, per stage and timestep (median over the sampled pixels)
    chans = model.unet.stage_channels(dense.stages)
    bounds = np.cumsum([0, *chans])
    cos = {}
    for kind, d, p in (("centre", dc, pc), ("global", dg, pg)):
        d, p = d.astype(np.float64), p.astype(np.float64)
        table = np.zeros((len(dense.stages), len(dense.timesteps)))
        for s in range(len(chans)):
            a_, b_ = d[..., bounds[s] : bounds[s + 1]], p[..., bounds[s] : bounds[s + 1]]
            c = (a_ * b_).sum(-1) / (np.linalg.norm(a_, axis=-1) * np.linalg.norm(b_, axis=-1) + 1e-12)
            table[s] = np.median(c, axis=0)
        cos[kind] = table

    dense_pps = H * W / t_dense
    patch_pps = a.patch_pixels / t_patch
    res = {
        "preset": preset,
        "device": str(device) if device.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)",
        "pretrained": bool(a.model),
        "scene": [H, W, int(cube.data.shape[2])],
        "tiles": n_tiles,
        "dense_s": round(t_dense, 3),
        "dense_pixels_per_s": round(dense_pps, 1),
        "dense_records": len(stamps) - 2,
        "dense_max_record_gap_s": round(max_gap, 3),
        "patch_pixels_per_s": round(patch_pps, 3),
        "speedup": round(dense_pps / patch_pps, 1),
        "flops_per_pixel_dense": flops_dense,
        "flops_per_pixel_patch": flops_patch,
        "flop_ratio": round(flops_patch / flops_dense, 1),
        "gflops_achieved": round(flops_dense * H * W / t_dense / 1e9, 1),
        "matmul_gflops": {"fp32": round(mm32, 1), "bf16": round(mm16, 1)},
        "bf16_autocast": effective_bf16(model, dense, device),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cosine_dense_vs_patch": {
            "stages": list(dense.stages),
            "timesteps": list(dense.timesteps),
            **{k: np.round(v, 4).tolist() for k, v in cos.items()},
            "median_all": {k: round(float(np.median(v)), 4) for k, v in cos.items()},
        },
    }
    mm = res["matmul_gflops"]["bf16" if res["bf16_autocast"] else "fp32"]
    res["fraction_of_matmul"] = round(res["gflops_achieved"] / mm, 3)
    rows = [
        ("preset / device", f"{preset} / {res['device']}"),
        ("dense, whole scene", f"{t_dense:.2f} s, {dense_pps:,.0f} px/s ({n_tiles} tile(s))"),
        ("progress records", f"{len(stamps) - 2}, largest gap {max_gap:.2f} s"),
        ("patch, sampled pixels", f"{t_patch:.2f} s for {a.patch_pixels} px, {patch_pps:.2f} px/s"),
        ("speedup (px/s)", f"{res['speedup']:,.0f}x"),
        ("FLOP per pixel", f"dense {flops_dense / 1e6:.1f} M, patch {flops_patch / 1e9:.2f} G "
                           f"({res['flop_ratio']:,.0f}x)"),
        ("achieved", f"{res['gflops_achieved']} GFLOP/s = {res['fraction_of_matmul']:.0%} of "
                     f"{'bf16' if res['bf16_autocast'] else 'fp32'} matmul ({mm} GFLOP/s)"),
        ("peak RSS", f"{res['peak_rss_mb']:.0f} MB"),
        ("cos(dense, patch)", f"median centre {res['cosine_dense_vs_patch']['median_all']['centre']}"
                              f", global {res['cosine_dense_vs_patch']['median_all']['global']}"),
    ]
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
        print(f"-> {a.json}")


if __name__ == "__main__":
    main()
