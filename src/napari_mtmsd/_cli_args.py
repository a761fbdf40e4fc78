"""The command line's arguments: one function per command, the settings' flags, help and
defaults derived from the job configs (``config``)."""

from __future__ import annotations

import argparse
from typing import Any

from . import __version__
from .config import (
    DEFAULT_PRESET,
    FEATURE_FIELDS,
    PRESETS,
    ClassifierConfig,
    PretrainConfig,
    add_arguments,
)

DEVICES = ("auto", "cpu", "cuda", "mps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-mtmsd",
        description="Hyperspectral classification with multi-timestep multi-stage diffusion "
        "features (MTMSD). INPUT is a file (ENVI .hdr, .mat, .npy, .tif) or sample:indian_pines "
        "/ sample:synthetic.",
    )
    p.add_argument("--version", action="version", version=f"napari-mtmsd {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_info, _add_pretrain, _add_extract, _add_train, _add_update, _add_predict,
                _add_evaluate, _add_cache, _add_demo):  # fmt: skip
        add(sub)  # the command's name is ``args.command``
    return p


Subparsers = Any  # argparse's _SubParsersAction


def _command(sub: Subparsers, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help)


def _overwrite(sp: argparse.ArgumentParser) -> None:
    help = "replace outputs napari-mtmsd wrote before (nothing else is ever replaced)"
    sp.add_argument("--overwrite", action="store_true", help=help)


def _common(sp: argparse.ArgumentParser, key: bool = True, device: bool = True) -> None:
    if key:
        sp.add_argument("--key", help="variable name in a .mat file")
    if device:
        sp.add_argument("--device", default="auto", choices=DEVICES)


def _features(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--timesteps", help=FEATURE_FIELDS["timesteps"])
    sp.add_argument("--stages", help=FEATURE_FIELDS["stages"])
    sp.add_argument("--noise-draws", type=int, help=FEATURE_FIELDS["noise_draws"])
    _cache_dir(sp)


def _cache_dir(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--cache-dir", help="feature cache (default ~/.cache/napari-mtmsd)")
    _cache_max_gb(sp)


def _cache_max_gb(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--cache-max-gb", type=float, help="cap on the feature cache's disk use; "
                    "the least recently used entries make room (default $NAPARI_MTMSD_CACHE_MAX_GB "
                    "or 50)")  # fmt: skip


def _dask(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the tiles as dask.distributed tasks: a scheduler address (tcp://host:8786), "
        "its scheduler file (.json), or local:N for N worker processes here (pip install "
        "'napari-mtmsd[distributed]'; docs/scaling.md)",
    )


def _add_info(sub: Subparsers) -> None:
    sp = _command(
        sub, "info", "describe a cube or label file: shape, bands, wavelengths, variables"
    )
    sp.add_argument("input")
    sp.add_argument("--json", action="store_true", help="print JSON")
    _common(sp, device=False)


def _add_pretrain(sub: Subparsers) -> None:
    sp = _command(sub, "pretrain", "pretrain the diffusion model on a cube's unlabelled patches")
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True, help="model directory")
    add_arguments(sp, PretrainConfig)
    sp.add_argument("--resume", action="store_true", help="continue the run saved in --output")
    sp.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    _common(sp)
    _overwrite(sp)


def _add_extract(sub: Subparsers) -> None:
    sp = _command(sub, "extract", "compute diffusion features and save them with a JSON sidecar")
    sp.add_argument("input")
    sp.add_argument("--model", required=True, help="model directory from 'pretrain'")
    sp.add_argument("-o", "--output", required=True, help="output directory")
    sp.add_argument("--mode", default="dense", choices=("dense", "patch"))
    sp.add_argument("--pixels", default="all", help="'all' or 'labelled:GT_FILE'")
    _features(sp)
    _dask(sp)
    _common(sp)
    _overwrite(sp)


def _add_train(sub: Subparsers) -> None:
    sp = _command(sub, "train", "train the MTMSD classifier on labelled pixels")
    sp.add_argument("input")
    sp.add_argument("--labels", required=True, help="training label map (0 = unlabelled)")
    sp.add_argument("--labels-key", help="variable name in a .mat label file")
    sp.add_argument("--model", required=True, help="model directory from 'pretrain'")
    sp.add_argument("-o", "--output", required=True, help="classifier directory")
    sp.add_argument("--seed", type=int, default=0)
    _features(sp)
    add_arguments(sp, ClassifierConfig, ("method", "k", "n_models", "epochs"))
    _common(sp)
    _overwrite(sp)


def _add_update(sub: Subparsers) -> None:
    sp = _command(sub, "update", "continue a classifier on new labels, as the panel's Update")
    sp.add_argument("input")
    sp.add_argument("--classifier", required=True, help="classifier directory to continue")
    sp.add_argument("--labels", required=True, help="the training labels now (0 = unlabelled)")
    sp.add_argument("--labels-key", help="variable name in a .mat label file")
    sp.add_argument("-o", "--output", required=True, help="the updated classifier's directory")
    sp.add_argument("--map", help="also write the new class map here (.tif, .npy, .mat, .hdr)")
    _cache_dir(sp)
    add_arguments(sp, ClassifierConfig, ("method", "update_epochs", "n_models", "epochs"))
    _common(sp)
    _overwrite(sp)


def _add_predict(sub: Subparsers) -> None:
    sp = _command(
        sub,
        "predict",
        "classify whole cubes with a trained classifier, tile by tile (features come from the "
        "cache only with --cache-dir)",
    )
    sp.add_argument("inputs", nargs="+", metavar="INPUT")
    sp.add_argument("--classifier", required=True, help="classifier directory from 'train'")
    sp.add_argument("-o", "--output", required=True, help="output directory")
    sp.add_argument("--format", default="tif", choices=("tif", "npy", "mat", "hdr"))
    _cache_dir(sp)
    _dask(sp)
    _common(sp)
    _overwrite(sp)


def _add_evaluate(sub: Subparsers) -> None:
    sp = _command(sub, "evaluate", "run the whole method and score it on test pixels")
    sp.add_argument("input")
    sp.add_argument("--ground-truth", help="label map (sample: inputs bring their own)")
    sp.add_argument(
        "--split", default="random:0.1", help="random:F | per-class:N | blocks:K | mask:TRAIN,TEST"
    )
    sp.add_argument("--model", help="model directory (default: pretrain one with --preset)")
    _pretraining(sp, "pretraining steps when no --model")
    sp.add_argument("--baselines", default="linear,svm,rf", help="comma list, '' for none")
    sp.add_argument("--json", help="write the report here")
    sp.add_argument("--png", help="write class map and confusion matrix PNGs here")
    _features(sp)
    _dask(sp)
    add_arguments(sp, ClassifierConfig, ("method", "k", "n_models", "epochs"))
    _common(sp)
    _overwrite(sp)


def _pretraining(sp: argparse.ArgumentParser, steps_help: str) -> None:
    """The seeds and the pretraining of ``evaluate`` and ``demo``."""
    sp.add_argument("--seed", type=int, default=827, help="seed of the split and the classifier")
    sp.add_argument("--preset", default=DEFAULT_PRESET, choices=tuple(PRESETS))
    sp.add_argument("--steps", type=int, help=steps_help)
    sp.add_argument("--pretrain-seed", type=int, default=0, help="seed of the pretraining")


def _add_cache(sub: Subparsers) -> None:
    sp = _command(sub, "cache", "show the feature cache's entries and disk use; --clear frees it")
    sp.add_argument("--cache-dir", help="cache directory (default ~/.cache/napari-mtmsd)")
    _cache_max_gb(sp)
    sp.add_argument("--clear", action="store_true", help="remove every entry")


def _add_demo(sub: Subparsers) -> None:
    sp = _command(sub, "demo", "the main job: MTMSD on the embedded Indian Pines scene")
    sp.add_argument("-o", "--output", default="mtmsd-demo", help="output directory")
    sp.add_argument("--split", default="random:0.1")
    _pretraining(sp, "pretraining steps (default: the preset's)")
    _common(sp, key=False)
    _overwrite(sp)
