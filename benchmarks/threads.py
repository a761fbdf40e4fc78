"""Pretraining throughput (``cpu`` preset, Indian Pines) with a fixed or an adaptive thread count.

    python benchmarks/threads.py --steps 80 --threads auto,1,auto [--busy]

Prints samples/s over the steps after the 5th, the load average, the tuner's choices and the
count each step ran with. ``--busy`` runs one spinning process beside it (one busy process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from napari_mtmsd import device, pretrain
from napari_mtmsd.samples import load_indian_pines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--threads", default="auto,1", help="comma list of counts or 'auto'")
    ap.add_argument("--busy", action="store_true", help="one spinning process beside the runs")
    a = ap.parse_args()
    made: list[device.ThreadTuner] = []
    factory = device.ThreadTuner.for_device.__func__

    def keep(cls, *args, **kwargs):
        made.append(factory(cls, *args, **kwargs))
        return made[-1]

    pretrain.ThreadTuner.for_device = classmethod(keep)
    cube, _ = load_indian_pines()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
    try:
        for t in a.threads.split(","):
            n = None if t == "auto" else int(t)
            stamps, counts = [], []
            gen = pretrain.iter_pretrain(
                cube, preset="cpu", steps=a.steps, device="cpu", num_threads=n
            )
            for rec in gen:
                if "loss" in rec:
                    stamps.append(time.perf_counter())
                    counts.append(torch.get_num_threads())
            rate = 16 * (len(stamps) - 6) / (stamps[-1] - stamps[5])
            print(
                f"threads={t}: {rate:.1f} samples/s, load {os.getloadavg()[0]:.1f}, "
                f"choices {made[-1].chosen}, per step {''.join(map(str, counts))}",
                flush=True,
            )
    finally:
        if hog is not None:
            hog.kill()


if __name__ == "__main__":
    main()
