"""Accuracy of dense against patch (reference) features on Indian Pines, same model and split.

The reference patch mode costs one U-Net pass per pixel and timestep, so on a CPU it is run on the
training pixels of the paper's 10 % split and a fixed random sample of its test pixels; dense
features are read for exactly the same pixels. The same MTMSD heads (same seed) are trained on
each and scored on the same test sample.

    .venv/bin/python benchmarks/modes.py --model MODEL_DIR --test-pixels 1000 --json out/modes.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_mtmsd._progress import run
from napari_mtmsd.classifier import MTMSDClassifier
from napari_mtmsd.features import FeatureSpec, iter_extract_pixels
from napari_mtmsd.metrics import scores
from napari_mtmsd.model import DiffusionModel
from napari_mtmsd.pipeline import default_k, labelled_pixels
from napari_mtmsd.samples import load_indian_pines
from napari_mtmsd.splits import make_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--seed", type=int, default=827)
    ap.add_argument("--test-pixels", type=int, default=1000)
    ap.add_argument("--json")
    a = ap.parse_args()

    cube, gt = load_indian_pines()
    model = DiffusionModel.load(a.model)
    train, test = make_split(gt.data, "random:0.1", seed=a.seed)
    tr_xy, y_tr = labelled_pixels(np.where(train, gt.data, 0))
    te_xy, y_te = labelled_pixels(np.where(test, gt.data, 0))
    pick = np.sort(np.random.default_rng(a.seed).choice(len(te_xy), a.test_pixels, replace=False))
    te_xy, y_te = te_xy[pick], y_te[pick]
    coords = np.concatenate([tr_xy, te_xy])
    labels = sorted(int(v) for v in np.unique(gt.data[gt.data > 0]))

    res = {"seed": a.seed, "n_train": len(tr_xy), "n_test": len(te_xy), "modes": {}}
    for mode in ("dense", "patch"):
        t0 = time.perf_counter()
        c, g = run(iter_extract_pixels(model, cube, coords, FeatureSpec(mode=mode, noise_draws=1), "cpu"))
        t_feat = time.perf_counter() - t0
        clf = MTMSDClassifier(k=default_k(c.shape[-1]), seed=a.seed)
        clf.fit(c[: len(tr_xy)], g[: len(tr_xy)], y_tr)
        s = scores(y_te, clf.predict(c[len(tr_xy) :], g[len(tr_xy) :]), labels=labels)
        res["modes"][mode] = {"oa": s["oa"], "aa": s["aa"], "kappa": s["kappa"],
                              "features_s": round(t_feat, 1)}
        print(f"{mode:>5}: OA {s['oa']:.2f}  AA {s['aa']:.2f}  kappa {s['kappa']:.2f}  "
              f"features {t_feat:.1f} s for {len(coords)} pixels", flush=True)
    res["oa_dense_minus_patch"] = res["modes"]["dense"]["oa"] - res["modes"]["patch"]["oa"]
    print(f"dense - patch: {res['oa_dense_minus_patch']:+.2f} OA points")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
