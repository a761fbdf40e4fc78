"""Peak memory of pretraining on a large memory-mapped scene (issue 13: memory bounded by tiles).

    OMP_NUM_THREADS=1 python benchmarks/pretrain_memory.py [--side 1448] [--bands 64]
        [--preset cpu] [--steps 2] [--budget-mb 512]

Writes a synthetic float32 scene of side x side x bands (1448 x 1448 x 64: 2.1 Mpx, 537 MB) into
a temporary directory, opens it memory-mapped and pretrains on it for ``--steps`` steps in this
process; prints the patch path taken, the peak RSS (``ru_maxrss``: torch's libraries and the
pages of the mapped file the process touched included), the largest anonymous RSS seen at a
progress record (what the process itself allocated) and the time. The PCA reads its sample
through the map; ``--budget-mb`` is ``_patches.PATCH_BUDGET_BYTES``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=1448)
    ap.add_argument("--bands", type=int, default=64)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--budget-mb", type=float, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        import napari_mtmsd._patches as patches
    except ImportError:  # before the patch sampler: always the whole input in memory
        patches = None
    from napari_mtmsd.io import Cube
    from napari_mtmsd.pretrain import iter_pretrain

    budget = int(args.budget_mb * 2**20) if patches else 0
    if patches:
        patches.PATCH_BUDGET_BYTES = budget
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scene.npy"
        shape = (args.side, args.side, args.bands)
        del_map = np.lib.format.open_memmap(path, "w+", np.float32, shape)
        offset = del_map.offset
        del del_map  # written by plain file writes: the pages do not count in our RSS
        rng = np.random.default_rng(0)
        mix = rng.normal(size=(4, args.bands)).astype(np.float32)
        with open(path, "r+b") as f:
            f.seek(offset)
            for r0 in range(0, args.side, 64):  # smooth-ish spectra, a strip at a time
                strip = rng.normal(size=(min(64, args.side - r0), args.side, 4)).astype(np.float32)
                f.write((strip @ mix).tobytes())
        cube = Cube(data=np.load(path, mmap_mode="r"), name="synthetic")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0, anon = time.perf_counter(), 0.0
        job = iter_pretrain(cube, preset=args.preset, steps=args.steps, device="cpu",
                            num_threads=1)  # fmt: skip
        while True:
            anon = max(anon, rss_anon_mb())
            try:
                next(job)
            except StopIteration as stop:
                model = stop.value
                break
        seconds = time.perf_counter() - t0
        C = model.n_components
        padded = 4 * C * (args.side + model.patch_size) ** 2
        path_taken = "windows" if patches and 3 * padded > budget else "whole"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.side}x{args.side}x{args.bands} ({args.side**2 / 1e6:.1f} Mpx, "
          f"{np.prod(shape) * 4 / 2**20:.0f} MB), preset {args.preset}, {args.steps} steps: "
          f"path {path_taken}, peak RSS {peak:.0f} MB (before pretraining {rss0:.0f} MB), "
          f"largest anonymous RSS at a record {anon:.0f} MB, {seconds:.1f} s")  # fmt: skip


def rss_anon_mb() -> float:
    """This process's resident anonymous memory now (not the mapped file's pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
