"""The ``napari-mtmsd`` command line: the same jobs as the napari widgets, for scripts and batches.

Inputs are a file path or ``sample:indian_pines`` / ``sample:synthetic``. Any error prints one
line naming the file or value (exit status 2; ``--debug`` shows the traceback instead); outputs
never replace what napari-mtmsd did not write, and what it wrote only with ``--overwrite``;
Ctrl-C stops cleanly (130).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import errors
from ._cli_args import build_parser
from ._text import parse_ints
from .config import ClassifierConfig, PretrainConfig, from_arguments
from .errors import InputError


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
    from ._atomic import check_output_dir
    from ._console import ProgressPrinter, fmt_s
    from .io import load_input
    from .pretrain import iter_pretrain

    check_output_dir(a.output, overwrite=a.overwrite or a.resume)
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
    from ._atomic import check_output_dir
    from .export import iter_export
    from .io import load_input, read_labels

    check_output_dir(a.output, a.overwrite)
    cube, _ = load_input(a.input, key=a.key)
    model = _load_model(a.model)
    if a.pixels == "all":
        labels = None
    elif a.pixels.startswith("labelled:"):
        labels = read_labels(a.pixels.split(":", 1)[1]).data
    else:
        raise InputError(f"--pixels takes 'all' or 'labelled:GT_FILE', not {a.pixels!r}")
    about = {"model": str(a.model), "input": a.input}
    with _engine(a.dask) as engine:
        job = iter_export(
            model, cube, _spec(a), a.output, labels, a.device, a.cache_dir, about, engine
        )
        shape = _run(job)
    print(f"features {shape} x 2 (centre, global) float16 -> {a.output}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from ._atomic import check_output_dir
    from .io import load_input, read_labels
    from .pipeline import iter_train

    check_output_dir(a.output, a.overwrite)
    cube, _ = load_input(a.input, key=a.key)
    labels = _labels_on_grid(read_labels(a.labels, key=a.labels_key), cube, a.labels)
    model = _load_model(a.model)
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
    from .io import load_input, scratch_maps, write_prediction
    from .pipeline import iter_predict

    bundle = ClassifierBundle.load(a.classifier)
    cubes = {inp: load_input(inp, key=a.key)[0] for inp in dict.fromkeys(a.inputs)}  # lazy
    stems = _prediction_stems(cubes, Path(a.output), a.format, a.overwrite)
    with _engine(a.dask) as engine:
        for inp, cube in cubes.items():
            stem = stems[inp]
            # the maps fill memory maps tile by tile and are streamed into their format
            with scratch_maps(a.output, stem, cube.data.shape[:2]) as out:
                _run(iter_predict(bundle, cube, a.device, a.cache_dir, out=out, engine=engine))
                path, conf, note = write_prediction(
                    a.output, stem, a.format, *out, bundle.class_names, bundle.colors,
                    cube.georef,
                )  # fmt: skip
            print(f"{inp}: class map -> {path}, confidence -> {conf}")
            if note:
                print(f"note: {note}")
    return 0


def _engine(address: str | None) -> Any:
    """The dask engine of ``--dask ADDRESS`` (closed on exit), or None: this process."""
    if not address:
        return contextlib.nullcontext(None)
    from .distributed import DaskEngine

    return DaskEngine(address)


def _prediction_stems(
    cubes: dict[str, Any], out: Path, fmt: str, overwrite: bool
) -> dict[str, str]:
    """The file stem of each input's maps, before any work: two inputs of one name are refused
    (not left to overwrite each other's maps), and so are existing maps without ``overwrite``."""
    from ._atomic import check_output_file

    stems: dict[str, str] = {}
    for inp, cube in cubes.items():
        stem = cube.name.replace(" ", "_").replace("/", "_")
        other = next((i for i, s in stems.items() if s == stem), None)
        if other is not None:
            raise InputError(
                f"{other} and {inp} would both write {stem}_classes.{fmt}: predict them into "
                "different -o directories"
            )
        conf_ext = fmt if fmt in ("tif", "hdr") else "npy"
        for name in (f"{stem}_classes.{fmt}", f"{stem}_confidence.{conf_ext}"):
            check_output_file(out / name, overwrite)
        stems[inp] = stem
    return stems


def _load_model(path: str) -> Any:
    """The model in ``path``; an unfinished pretraining is said so (it is usable, but worse)."""
    from .model import DiffusionModel

    model = DiffusionModel.load(path)
    cfg = model.config
    if cfg.get("complete") is False:
        print(
            f"napari-mtmsd: warning: {path} is an unfinished pretraining (step {cfg.get('step')} "
            f"of {cfg.get('total_steps')}); finish it with 'pretrain --resume -o {path}'",
            file=sys.stderr,
        )
    return model


def cmd_cache(a: argparse.Namespace) -> int:
    from . import cache

    root = Path(a.cache_dir) if a.cache_dir else cache.default_root()
    entries = cache.entries(root)
    for e in entries:  # least recently used first: the next to go when room is needed
        per_px = f"{e['bytes_per_pixel']:,.0f} B/px" if e["bytes_per_pixel"] else ""
        print(f"{e['size_mb']:10.1f} MB  {per_px:>11}  {e['cube']} {e['shape']}  {e['path']}")
    used, cap = cache.disk_usage(root), cache.max_bytes()
    print(f"{used / 2**20:10.1f} MB  in {root} ({len(entries)} entries; cap {cap / 1e9:g} GB)")
    if a.clear:
        kept = cache.clear(root)
        note = f" (kept {len(kept)} items that are not cache entries)" if kept else ""
        print(f"cleared {root}{note}")
    return 0


def _classifier_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The classifier options given (the others keep the job's defaults)."""
    return {
        name: getattr(a, name)
        for name in ("method", "k", "n_models", "epochs")
        if getattr(a, name, None) is not None
    }


def _labels_on_grid(labels: Any, cube: Any, path: str) -> Any:
    """``labels`` when they lie on the cube's pixels: both georeferenced on other grids (a
    label map of another scene or resampled) is refused; either without georeferencing is
    taken as the cube's pixels."""
    import numpy as np

    from .io._georef import same_crs

    mine, theirs = labels.georef, cube.georef
    if mine is None or theirs is None or mine.transform is None or theirs.transform is None:
        return labels
    near = np.allclose(mine.transform, theirs.transform, rtol=0, atol=1e-6)
    if not (near and same_crs(mine.crs, theirs.crs)):
        raise InputError(
            f"{path}: the labels lie on another grid than the cube {cube.name!r} (geotransform "
            f"{mine.transform} against {theirs.transform}, or another CRS): expected a label "
            "map on the cube's pixels"
        )
    return labels


def cmd_update(a: argparse.Namespace) -> int:
    """The panel's Update from the command line: continue a saved classifier on new labels."""
    from ._atomic import check_output_dir, check_output_file
    from .io import LabelMap, load_input, read_labels, write_labels
    from .workspace import Workspace

    check_output_dir(a.output, a.overwrite)
    if a.map:
        check_output_file(a.map, a.overwrite)
    cube, _ = load_input(a.input, key=a.key)
    labels = _labels_on_grid(read_labels(a.labels, key=a.labels_key), cube, a.labels)
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
    from .io import load_input, read_labels

    _check_report_outputs(a.json, a.png, a.overwrite)
    cube, gt = load_input(a.input, key=a.key)
    if a.ground_truth:
        gt = read_labels(a.ground_truth)
    if gt is None:
        raise InputError(f"{a.input} brings no ground truth: give --ground-truth GT_FILE")
    model = _load_model(a.model) if a.model else None
    with _engine(a.dask) as engine:
        report = _evaluate(a, cube, gt, model, engine)
    _show_report(report, a.json, a.png, gt.class_names, gt.colors)
    return 0


def _evaluate(a: argparse.Namespace, cube: Any, gt: Any, model: Any, engine: Any) -> Any:
    from .evaluation import iter_evaluate

    return _run(
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
            engine=engine,
            **_classifier_kwargs(a),
        )
    )


def cmd_demo(a: argparse.Namespace) -> int:
    """The main job: the whole method on the embedded Indian Pines scene with the cpu preset."""
    from ._atomic import check_output_dir, claim_dir
    from .evaluation import iter_evaluate
    from .samples import load_indian_pines

    out = check_output_dir(a.output, a.overwrite)
    cube, gt = load_indian_pines()
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
    claim_dir(out, "demo output")
    _show_report(report, out / "report.json", out, gt.class_names, gt.colors)
    report["bundle"].save(out / "classifier")
    print(f"classifier (with its diffusion model) -> {out / 'classifier'}")
    return 0


def _check_report_outputs(json_path: str | None, png_dir: str | None, overwrite: bool) -> None:
    """Before any work: the report and figures may be written where asked."""
    from ._atomic import check_output_file

    if json_path:
        check_output_file(json_path, overwrite)
    if png_dir:
        for name in ("class_map.png", "confusion_matrix.png"):
            check_output_file(Path(png_dir) / name, overwrite)


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
    if getattr(args, "cache_max_gb", None) is not None:  # read by cache.max_bytes
        os.environ["NAPARI_MTMSD_CACHE_MAX_GB"] = str(args.cache_max_gb)
    if args.debug:
        return COMMANDS[args.command](args)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"napari-mtmsd {args.command}: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed by the reader (`| head`): nothing left to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # the one place any error becomes a one-line message
        print(f"napari-mtmsd {args.command}: error: {errors.describe(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
