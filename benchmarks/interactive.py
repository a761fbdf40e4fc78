"""Latency of the interactive loop: "Update" (continue training on cached features from the
current labels) to a new ``prediction`` layer, on Indian Pines, in a real napari viewer driven
like a user would.

First, before the diffusion model is given to the panel, Train makes the quick map from the
spectra (timed: "first map"); giving the model then replaces it by the MTMSD map by itself
(features extracted or found in the cache, training, prediction: timed as "model -> MTMSD map").
Each repeat then adds a few "painted" pixels from the ground truth to the training labels, clicks
Update and waits until the prediction layer has been replaced.
With ``--compare`` each repeat also trains a classifier from scratch on the same labels (outside
the timed part), so the table shows what continuing costs in accuracy. Needs a display: run
under Xvfb, e.g.

    xvfb-run -a .venv/bin/python benchmarks/interactive.py --model out/ip_cpu \
        --json out/interactive.json

Without ``--model`` a model is pretrained first (``--preset``, ``--steps``) and, with
``--save-model DIR``, kept for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def _wait(app, widget, timeout: float = 3600.0) -> float:
    """Run the Qt event loop until the widget's job is over; returns the seconds it took.

    An idle ``QEventLoop`` as in napari itself: a loop that polled ``processEvents`` would take
    CPU time from the job on a 2-core machine.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    t0 = time.perf_counter()
    if widget.runner.busy:
        loop = QEventLoop()
        widget.runner.busy_changed.connect(lambda busy: None if busy else loop.quit())
        QTimer.singleShot(int(timeout * 1000), loop.quit)
        loop.exec()
        if widget.runner.busy:
            raise TimeoutError("job did not finish in time")
    app.processEvents()
    return time.perf_counter() - t0


def _off_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread that ends with it, as the widget would run it.

    The main thread must run no torch kernels of its own: that gives it an OpenMP team, and with
    more team threads than cores the widget's compute thread runs 10-20 % slower (see
    ``napari_mtmsd._qt._workers.compute_pool``). A finished thread's team goes with it.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _from_scratch_oa(classify, train, gt_data) -> float:
    """OA on the same test pixels as the widget's scores, of a classifier trained afresh with
    the widget's full-training settings on the same labels (not timed)."""
    from napari_mtmsd.metrics import scores
    from napari_mtmsd.pipeline import labelled_pixels
    from napari_mtmsd.pipeline import train as train_fresh

    ws = classify.session.ws
    store = ws.features
    bundle = train_fresh(
        ws.model, ws.cube, train, ws.spec, store=store, device="cpu",
        progress=False, **{**ws.classifier_config.classifier_kwargs(), "method": "paper"},
    )  # fmt: skip
    test = np.where((gt_data > 0) & (train == 0), gt_data, 0)
    coords, y = labelled_pixels(test)
    pred = bundle.classifier.predict(*store.pixels(coords))
    return float(scores(y, pred)["oa"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a saved diffusion model directory")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument(
        "--steps", type=int, default=None, help="pretraining steps without --model"
    )
    parser.add_argument("--save-model", type=Path, help="keep the pretrained model here")
    parser.add_argument("--split", default="per-class:10", help="initial training labels")
    parser.add_argument("--paint", type=int, default=20, help="pixels added before each update")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, default=None, help="classifier epochs (widget default)"
    )
    parser.add_argument("--ensemble", type=int, default=None, help="models in the ensemble")
    parser.add_argument(
        "--update-epochs", type=int, default=None, help="epochs of an Update (widget default)"
    )
    parser.add_argument("--method", default="auto", help="classifier method (panel's box)")
    parser.add_argument(
        "--compare", action="store_true",
        help="also train the paper's heads from scratch on each repeat's labels",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, help="feature cache (NAPARI_MTMSD_CACHE)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    if args.cache_dir is not None:
        os.environ["NAPARI_MTMSD_CACHE"] = str(args.cache_dir)
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_mtmsd._qt import MTMSDWidget
    from napari_mtmsd._reader import cube_layers, labels_layer
    from napari_mtmsd.model import DiffusionModel
    from napari_mtmsd.pretrain import pretrain
    from napari_mtmsd.samples import load_indian_pines

    torch.set_num_threads(args.threads)
    cube, gt = load_indian_pines()
    t0 = time.perf_counter()
    if args.model is not None:
        model = DiffusionModel.load(args.model)
        pretrain_s = 0.0
    else:
        model = _off_main(
            pretrain, cube, preset=args.preset, steps=args.steps, device="cpu", seed=0
        )
        pretrain_s = time.perf_counter() - t0
        if args.save_model is not None:
            model.save(args.save_model)

    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    for data, kwargs, kind in [*cube_layers(cube, preview=False), labels_layer(gt)]:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = MTMSDWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MTMSD")
    session, data, classify = widget.session, widget.data, widget.classify
    classify.method.setCurrentText(args.method)
    if args.epochs is not None:
        classify.epochs.setValue(args.epochs)
    if args.ensemble is not None:
        classify.n_models.setValue(args.ensemble)
    if args.update_epochs is not None:
        classify.update_epochs.setValue(args.update_epochs)
    data.gt_combo.setCurrentText(gt.name)
    classify.gt_combo.setCurrentText(gt.name)  # scores and confusion are redrawn on each update
    data.split_spec.setText(args.split)
    labels_layer_ = data.split_from_ground_truth()

    classify.train_and_predict()  # no model yet: the quick map
    quick_s = _wait(app, widget)
    quick_oa = (getattr(classify, "last_scores", None) or {}).get("oa", float("nan"))
    if session.ws.prediction is None or session.ws.prediction.method != "quick":
        raise SystemExit(f"no quick map: {widget.status.text()}")
    session.ws.set_model(model)  # the quick map gives way to the MTMSD map by itself
    first_s = _wait(app, widget)
    if classify.current_store() is None:
        raise SystemExit(f"feature extraction failed: {widget.status.text()}")

    rng = np.random.default_rng(0)
    gt_data = np.asarray(gt.data)
    rows = []
    for i in range(args.repeats):
        train = np.asarray(labels_layer_.data)
        free = np.argwhere((gt_data > 0) & (train == 0))
        pick = free[rng.choice(len(free), size=min(args.paint, len(free)), replace=False)]
        train[pick[:, 0], pick[:, 1]] = gt_data[pick[:, 0], pick[:, 1]]
        labels_layer_.data = train
        before = viewer.layers["prediction"].data
        t0 = time.perf_counter()
        classify.update_prediction()
        _wait(app, widget)
        latency = time.perf_counter() - t0
        if viewer.layers["prediction"].data is before:
            raise SystemExit(
                f"update {i} did not produce a new prediction: {widget.status.text()}"
            )
        report = getattr(classify, "last_scores", None) or {}
        row = {
            "repeat": i + 1,
            "n_train": int((train > 0).sum()),
            "latency_s": round(latency, 3),
            "oa": round(float(report.get("oa", float("nan"))), 2),
            "status": widget.status.text(),
        }
        if args.compare:
            row["oa_from_scratch"] = round(
                _off_main(_from_scratch_oa, classify, train, gt_data), 2
            )
        rows.append(row)

    latencies = [r["latency_s"] for r in rows]
    result = {
        "benchmark": "interactive update latency (Update -> new prediction layer)",
        "dataset": "Indian Pines 145 x 145 x 200",
        "threads": args.threads,
        "model": str(args.model) if args.model else f"pretrained here ({args.preset})",
        "preset": model.config.get("preset"),
        "pretrain_s": round(pretrain_s, 1),
        "first_map_s": round(quick_s, 2),
        "first_map_oa": round(float(quick_oa), 2),
        "model_to_mtmsd_map_s": round(first_s, 2),
        "method": args.method,
        "epochs": classify.epochs.value(),
        "update_epochs": classify.update_epochs.value(),
        "ensemble": classify.n_models.value(),
        "timesteps": classify.timesteps.text(),
        "stages": classify.stages.text(),
        "split": args.split,
        "paint_per_update": args.paint,
        "rows": rows,
        "median_latency_s": round(statistics.median(latencies), 3),
        "max_latency_s": round(max(latencies), 3),
        "torch": torch.__version__,
    }
    print(f"{'repeat':>6} {'train px':>9} {'latency s':>10} {'OA':>7} {'OA scratch':>11}")
    for r in rows:
        scratch = r.get("oa_from_scratch", float("nan"))
        print(
            f"{r['repeat']:>6} {r['n_train']:>9} {r['latency_s']:>10.3f} {r['oa']:>7.2f} "
            f"{scratch:>11.2f}"
        )
    print(
        f"median {result['median_latency_s']:.3f} s, max {result['max_latency_s']:.3f} s "
        f"({args.threads} threads; method {args.method}; first map (quick, no model) "
        f"{quick_s:.1f} s, OA {quick_oa:.2f}; model -> MTMSD map (features, training, "
        f"prediction) {first_s:.1f} s)"
    )
    if args.json is not None:
        from napari_mtmsd._atomic import write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(result, indent=1))
    viewer.close()
    return result


if __name__ == "__main__":
    main()
