"""The largest gap between two progress records of a job on Indian Pines (issue 15): a Stop
waits up to that long, and the progress bar stands still as long.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/gaps.py JOB [--steps N]

JOB: ``pretrain-cpu`` / ``pretrain-paper`` (fresh network, ``--steps`` steps, one thread),
``hash`` (``Cube.sha256`` of it and of a synthetic 512 MB memory-mapped cube), ``baselines`` (evaluate's
linear probe, SVM and random forest on the random:0.1 split), ``embedding`` (the few-label
scene embedding: fit and transform), ``train-paper`` (the paper's heads, k = 768, on features
of the paper preset's shape for the split's training pixels: random values, 2 epochs).

Features of the ``cpu`` model (``--model``) come from the feature cache in ``--cache`` (built
there once when missing). Gaps are given in wall seconds and in seconds of work (CPU seconds of
the process per torch thread: what the job takes on an idle machine); the machine is shared,
so wall seconds are upper bounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from napari_mtmsd import load_input
from napari_mtmsd._progress import run
from napari_mtmsd.pipeline import labelled_pixels
from napari_mtmsd.splits import make_split


def gaps(gen: Generator) -> tuple[dict, object]:
    """Drive ``gen``; its three largest gaps (wall and work seconds, and the record that ended
    each), and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    start_wall, found = wall, []
    while True:
        try:
            record = next(gen)
        except StopIteration as stop:
            record, result = {"stage": "end"}, stop.value
        now, now_cpu = time.perf_counter(), time.process_time()
        where = {k: v for k, v in record.items() if k in ("stage", "step", "micro", "message")}
        found.append((round((now_cpu - cpu) / torch.get_num_threads(), 2), round(now - wall, 2),
                      where))  # fmt: skip
        wall, cpu = now, now_cpu
        if record["stage"] == "end":
            break
    found.sort(key=lambda g: -g[0])
    summary = {"records": len(found) - 1, "total_s": round(wall - start_wall, 2),
               "largest (work s, wall s, ending at)": found[:3]}  # fmt: skip
    return summary, result


def hashing(cube) -> Generator:
    """The hash as a job (before ``iter_sha256`` existed: one unit)."""
    if hasattr(cube, "iter_sha256"):
        return (yield from cube.iter_sha256())
    return cube.sha256()


def store_and_split(args):
    from napari_mtmsd.model import DiffusionModel
    from napari_mtmsd.pipeline import iter_features

    cube, gt = load_input("sample:indian_pines")
    gt = np.asarray(gt.data)
    model = DiffusionModel.load(args.model)
    store = run(iter_features(model, cube, cache_dir=args.cache, device="cpu"))
    train, test = make_split(gt, "random:0.1", seed=827)
    return cube, gt, store, train, test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", choices=["pretrain-cpu", "pretrain-paper", "hash", "baselines",
                                    "embedding", "train-paper"])  # fmt: skip
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--model", default="/work/runs/model_s0")
    ap.add_argument("--cache", default="/work/runs/cache")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.job.startswith("pretrain"):
        from napari_mtmsd.pretrain import iter_pretrain

        cube, _ = load_input("sample:indian_pines")
        preset = args.job.split("-")[1]
        job = iter_pretrain(cube, preset=preset, steps=args.steps, device="cpu", num_threads=1)
        print(args.job, gaps(job)[0])
    elif args.job == "hash":
        from napari_mtmsd.io import Cube

        cube, _ = load_input("sample:indian_pines")
        print("hash indian_pines", gaps(hashing(cube))[0])
        with tempfile.TemporaryDirectory() as d:
            big = np.lib.format.open_memmap(Path(d) / "big.npy", "w+", np.float32,
                                            (2048, 512, 128))  # fmt: skip
            big[::64] = 1.0
            big.flush()
            cube = Cube(data=np.load(Path(d) / "big.npy", mmap_mode="r"), name="big")
            print("hash 512 MB memmap", gaps(hashing(cube))[0])
    elif args.job == "baselines":
        from napari_mtmsd.evaluation import _iter_baselines

        cube, gt, store, train, test = store_and_split(args)
        tr = labelled_pixels(np.where(train, gt, 0))
        te = labelled_pixels(np.where(test, gt, 0))
        labels = sorted(int(v) for v in np.unique(gt[gt > 0]))
        for name in ("linear", "svm", "rf"):
            summary, out = gaps(_iter_baselines((name,), cube, store, tr, te, labels, 827, 192))
            print(name, summary, {k: out[name].get(k) for k in ("oa", "time_s", "failed")})
    elif args.job == "embedding":
        from napari_mtmsd.embedding import FeatureEmbedding

        _, _, store, _, _ = store_and_split(args)
        summary, emb = gaps(FeatureEmbedding.iter_fit(store))
        print("embedding fit", summary)
        print("embedding transform", gaps(emb.iter_transform(store))[0])
    else:
        from napari_mtmsd.classifier import MTMSDClassifier

        cube, gt, _, train, _ = store_and_split(args)
        _, y = labelled_pixels(np.where(train, gt, 0))
        rng = np.random.default_rng(0)
        shape = (len(y), 19, 1280)  # the paper preset's default spec: 19 timesteps, 1280 channels
        centre = (rng.normal(size=shape) + y[:, None, None] % 3).astype(np.float16)
        glob = (rng.normal(size=shape) + y[:, None, None] % 5).astype(np.float16)
        clf = MTMSDClassifier(k=768, epochs=2, seed=0)
        print("train paper heads", gaps(clf.iter_fit(centre, glob, y))[0])


if __name__ == "__main__":
    main()
