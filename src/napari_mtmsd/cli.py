"""The ``napari-mtmsd`` command line: the same jobs as the napari widgets, for scripts and batches.

Inputs are a file path or ``sample:indian_pines`` / ``sample:synthetic``. Errors the user can fix
print one line naming the file or value (exit status 2); Ctrl-C stops cleanly (130).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._cli_args import build_parser
from ._text import parse_ints
from .config import ClassifierConfig, PretrainConfig, from_arguments
from .errors import InputError, MTMSDError


def _run(gen: Any) -> Any:
    from ._console import ProgressPrinter
    from ._progress import run

    printer = ProgressPrinter()
    try:
        return run(gen, printer)
    finally:
        printer.finish()


# ------------------------------------------------------------------------------------- commands


def cmd_info(a: argparse.Namespace) -> int:
    from .io import describe

    info = describe(a.input, key=a.key)
    if a.json:
        print(json.dumps(info, indent=1, default=str))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_pretrain(a: argparse.Namespace) -> int:
    from ._console import ProgressPrinter, fmt_s
    from .io import load_input
    from .pretrain import iter_pretrain

    cube, _ = load_input(a.input, key=a.key)
    t0 = time.perf_counter()
    last: dict[str, Any] = {}

    def keep(rec: dict[str, Any]) -> None:
        if rec.get("stage") == "pretrain":
            last.update(rec)

    config = from_arguments(PretrainConfig, a)
    gen = iter_pretrain(
        cube,
        device=a.device,
        out_dir=a.output,
        resume=a.resume,
        compile=a.compile,
        **config.pretrain_kwargs(),
    )
    printer = ProgressPrinter()

    from ._progress import run

    try:  # iter_pretrain writes the model directory itself (rank 0 only under torchrun)
        model = run(gen, lambda r: (keep(r), printer(r)))
    finally:
        printer.finish()
    dt = time.perf_counter() - t0
    print(
        f"pretrained {config.preset} model ({model.config.get('n_parameters', 0) / 1e6:.2f} M "
        f"parameters) in {fmt_s(dt)} ({dt:.1f} s): {last.get('samples_per_s', 0):.0f} samples/s, "
        f"final loss {last.get('loss', float('nan')):.4f} -> {a.output}"
    )
    return 0


def _spec(a: argparse.Namespace) -> Any:
    from .features import FeatureSpec

    kw: dict[str, Any] = {"mode": getattr(a, "mode", "dense")}
    for name in ("timesteps", "stages"):
        if getattr(a, name, None) is not None:
            kw[name] = parse_ints(getattr(a, name), f"--{name}")
    if getattr(a, "noise_draws", None) is not None:
        kw["noise_draws"] = a.noise_draws
    return FeatureSpec(**kw)


def cmd_extract(a: argparse.Namespace) -> int:
    from .export import iter_export
    from .io import load_input, read_labels
    from .model import DiffusionModel

    cube, _ = load_input(a.input, key=a.key)
    model = DiffusionModel.load(a.model)
    if a.pixels == "all":
        labels = None
    elif a.pixels.startswith("labelled:"):
        labels = read_labels(a.pixels.split(":", 1)[1]).data
    else:
        raise InputError(f"--pixels takes 'all' or 'labelled:GT_FILE', not {a.pixels!r}")
    about = {"model": str(a.model), "input": a.input}
    job = iter_export(model, cube, _spec(a), a.output, labels, a.device, a.cache_dir, about)
    shape = _run(job)
    print(f"features {shape} x 2 (centre, global) float16 -> {a.output}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from .io import load_input, read_labels
    from .model import DiffusionModel
    from .pipeline import iter_train

    cube, _ = load_input(a.input, key=a.key)
    labels = read_labels(a.labels, key=a.labels_key)
    model = DiffusionModel.load(a.model)
    model.config["path"] = str(a.model)
    bundle = _run(
        iter_train(
            model,
            cube,
            labels.data,
            _spec(a),
            class_names=labels.class_names,
            colors=labels.colors,
            device=a.device,
            cache_dir=a.cache_dir,
            seed=a.seed,
            **_classifier_kwargs(a),
        )
    )
    bundle.save(a.output)
    print(f"trained on {bundle.meta['n_train']} labelled pixels -> {a.output}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .bundle import ClassifierBundle
    from .io import load_input, write_prediction
    from .pipeline import iter_predict

    bundle = ClassifierBundle.load(a.classifier)
    for inp in a.inputs:
        cube, _ = load_input(inp, key=a.key)
        class_map, confidence = _run(iter_predict(bundle, cube, a.device, a.cache_dir))
        stem = cube.name.replace(" ", "_").replace("/", "_")
        path, conf, note = write_prediction(
            a.output, stem, a.format, class_map, confidence, bundle.class_names, bundle.colors,
            cube.georef,
        )  # fmt: skip
        print(f"{inp}: class map -> {path}, confidence -> {conf}")
        if note:
            print(f"note: {note}")
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    from . import cache

    root = Path(a.cache_dir) if a.cache_dir else cache.default_root()
    entries = cache.entries(root)
    for e in entries:
        print(f"{e['size_mb']:10.1f} MB  {e['cube']} {e['shape']}  {e['path']}")
    print(f"{cache.disk_usage(root) / 2**20:10.1f} MB  in {root} ({len(entries)} entries)")
    if a.clear:
        cache.clear(root)
        print(f"cleared {root}")
    return 0


def _classifier_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The classifier options given (the others keep the job's defaults)."""
    return {
        name: getattr(a, name)
        for name in ("method", "k", "n_models", "epochs")
        if getattr(a, name, None) is not None
    }


def cmd_update(a: argparse.Namespace) -> int:
    """The panel's Update from the command line: continue a saved classifier on new labels."""
    from .io import LabelMap, load_input, read_labels, write_labels
    from .workspace import Workspace

    cube, _ = load_input(a.input, key=a.key)
    labels = read_labels(a.labels, key=a.labels_key)
    ws = Workspace(cube, device=a.device, cache_dir=a.cache_dir)
    ws.load_classifier(a.classifier)
    ws.classifier_config = from_arguments(ClassifierConfig, a)
    ws.set_labels(labels.data)
    job = ws.update_job()
    if job.note:
        print(job.note)
    prediction = job.commit(_run(job.steps))
    bundle = ws.save_classifier(a.output)
    clf = ws.bundle.classifier
    how = "continued" if clf.history_["warm_start"] else "trained afresh"
    epochs = max(clf.history_["epochs_run"])
    print(f"{how} on {ws.bundle.meta['n_train']} labelled pixels ({epochs} epochs) -> {bundle}")
    if a.map:
        class_map = LabelMap(prediction.class_map, name=cube.name, georef=cube.georef)
        path = write_labels(a.map, class_map, ws.class_names, ws.colors)  # on the cube's grid
        print(f"class map -> {path}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .evaluation import iter_evaluate
    from .io import load_input, read_labels
    from .model import DiffusionModel

    cube, gt = load_input(a.input, key=a.key)
    if a.ground_truth:
        gt = read_labels(a.ground_truth)
    if gt is None:
        raise InputError(f"{a.input} brings no ground truth: give --ground-truth GT_FILE")
    model = DiffusionModel.load(a.model) if a.model else None
    report = _run(
        iter_evaluate(
            cube,
            gt.data,
            split=a.split,
            seed=a.seed,
            model=model,
            preset=a.preset,
            pretrain_steps=a.steps,
            pretrain_seed=a.pretrain_seed,
            device=a.device,
            spec=_spec(a),
            cache_dir=a.cache_dir if a.cache_dir else False,
            baselines=tuple(b for b in a.baselines.split(",") if b),
            class_names=gt.class_names,
            **_classifier_kwargs(a),
        )
    )
    _show_report(report, a.json, a.png, gt.class_names, gt.colors)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """The main job: the whole method on the embedded Indian Pines scene with the cpu preset."""
    from .evaluation import iter_evaluate
    from .samples import load_indian_pines

    cube, gt = load_indian_pines()
    out = Path(a.output)
    print(
        f"MTMSD demo: {cube.name} {cube.data.shape[0]}x{cube.data.shape[1]}x{cube.data.shape[2]}, "
        f"{len(gt.class_names or [])} classes, split {a.split} (seed {a.seed}), preset {a.preset}"
    )
    report = _run(
        iter_evaluate(
            cube,
            gt.data,
            split=a.split,
            seed=a.seed,
            preset=a.preset,
            pretrain_steps=a.steps,
            pretrain_seed=a.pretrain_seed,
            device=a.device,
            cache_dir=False,
            class_names=gt.class_names,
        )
    )
    _show_report(report, out / "report.json", out, gt.class_names, gt.colors)
    report["bundle"].save(out / "classifier")
    print(f"classifier (with its diffusion model) -> {out / 'classifier'}")
    return 0


def _show_report(
    report: dict[str, Any],
    json_path: str | Path | None,
    png_dir: str | Path | None,
    class_names: Sequence[str] | None,
    colors: Any,
) -> None:
    from .evaluation import format_report, save_report

    print(format_report(report))
    written = save_report(report, json_path, png_dir, class_names, colors)
    if json_path:
        print(f"report -> {written.pop(0)}")
    if png_dir:
        print(f"figures -> {written[0]}, {written[1]}")


# --------------------------------------------------------------------------------------- parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": cmd_info,
    "pretrain": cmd_pretrain,
    "extract": cmd_extract,
    "train": cmd_train,
    "update": cmd_update,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "cache": cmd_cache,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MTMSDError as e:
        print(f"napari-mtmsd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"napari-mtmsd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-mtmsd {args.command}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
