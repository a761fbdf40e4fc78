"""Pretraining throughput: samples/s and achieved GFLOP/s per preset and precision, next to
this machine's matmul GFLOP/s measured in the same run.

    python benchmarks/pretrain.py --json OUT.json [--steps 3] [--device auto]

FLOPs are those of one whole training step (forward + backward, the AdamW update excluded),
counted by ``torch.utils.flop_counter.FlopCounterMode`` while the step runs: it counts matmuls,
convolutions and attention (their backward included) and nothing elementwise (norms,
activations, the optimizer), so "achieved GFLOP/s" is the useful dense arithmetic rate.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from _machine import matmul_gflops, sync
from napari_mtmsd._atomic import write_text
from napari_mtmsd.device import autocast, bf16_supported, resolve_device
from napari_mtmsd.schedule import NoiseSchedule
from napari_mtmsd.unet import PRESETS, UNet

#: Batches per device kind: on a 2-core CPU one paper-preset step of 32 patches takes minutes.
BATCH = {"cpu": {"cpu": 16, "paper": 2}, "cuda": {"cpu": 64, "paper": 32}}


def bench(preset: str, bf16: bool, device: torch.device, steps: int, batch: int) -> dict:
    cfg = dataclasses.replace(PRESETS[preset], in_channels=25)
    torch.manual_seed(0)
    net = UNet(cfg).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    sched = NoiseSchedule()
    p = cfg.patch_size
    x0 = torch.randn(batch, 25, p, p, device=device).contiguous(memory_format=torch.channels_last)
    noise = torch.randn_like(x0)
    t = torch.randint(0, sched.T, (batch,), device=device)

    def step() -> None:
        xt = sched.q_sample(x0, t, noise)
        with autocast(device, enabled=bf16):
            out = net(xt, t)
        loss = sched.loss(out, x0, xt, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t0) / steps
    return {
        "preset": preset,
        "precision": "bf16" if bf16 else "fp32",
        "batch": batch,
        "patch": p,
        "n_parameters": net.n_parameters,
        "gflop_per_step": flops / 1e9,
        "gflop_per_sample_fwd_bwd": flops / batch / 1e9,
        "s_per_step": dt,
        "samples_per_s": batch / dt,
        "achieved_gflops": flops / dt / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--presets", nargs="+", default=["cpu", "paper"], choices=sorted(PRESETS))
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    precisions = [False] + ([True] if bf16_supported(device) else [])
    result = {
        "device": torch.cuda.get_device_name(device)
        if kind == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "matmul_gflops": {"fp32": matmul_gflops(device, torch.float32)},
        "runs": [],
    }
    if bf16_supported(device):
        result["matmul_gflops"]["bf16"] = matmul_gflops(device, torch.bfloat16)
    for preset in args.presets:
        for bf16 in precisions:
            batch = BATCH[kind].get(preset, 8)
            with contextlib.suppress(torch.OutOfMemoryError):
                result["runs"].append(bench(preset, bf16, device, args.steps, batch))
    print(
        f"device: {result['device']} ({kind}, {result['threads']} threads, load "
        f"{result['load_average']}); torch {result['torch']}"
    )
    print(
        "matmul 2048^3: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result["matmul_gflops"].items())
    )
    header = (
        f"{'preset':<7}{'prec':<6}{'batch':>6}{'patch':>6}{'GFLOP/sample':>14}"
        f"{'samples/s':>11}{'GFLOP/s':>9}{'% matmul':>10}"
    )
    print(header)
    for r in result["runs"]:
        peak = result["matmul_gflops"][r["precision"]]
        r["fraction_of_matmul"] = r["achieved_gflops"] / peak
        print(
            f"{r['preset']:<7}{r['precision']:<6}{r['batch']:>6}{r['patch']:>6}"
            f"{r['gflop_per_sample_fwd_bwd']:>14.2f}{r['samples_per_s']:>11.1f}"
            f"{r['achieved_gflops']:>9.1f}{100 * r['fraction_of_matmul']:>9.0f}%"
        )
    write_text(args.json, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
