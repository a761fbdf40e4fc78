"""One settings dataclass per job and the one table of presets (torch-free).

The CLI flags (with their help text and true defaults) and the panel's forms are derived from
these fields, so a default is written once. ``FeatureSpec`` (features.py) is the feature job's
settings; :data:`FEATURE_FIELDS` describes the fields users set.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

#: Per preset: the U-Net architecture (``unet.UNetConfig`` fields) and the pretraining defaults.
#: ``cpu``: 12,800 patches of 32x32, ~210 s on 2 idle cores of this project's machines at the
#: measured 61 samples/s (fp32; see docs/pretraining.md), leaving room for the PCA and start-up
#: within 5 minutes. EMA decays are shorter than guided diffusion's 0.9999 because the runs are
#: short (the EMA must forget the initial weights). ``tiny``: the paper's decoder layout (9
#: blocks, so the default stages exist), 16x thinner, for tests.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "unet": {},
        "training": {"steps": 40_000, "batch_size": 32, "lr": 1e-4, "ema": 0.9999,
                     "checkpoint_every": 2000},
    },
    "cpu": {
        "unet": {"model_channels": 32, "learn_sigma": False, "patch_size": 32},
        "training": {"steps": 800, "batch_size": 16, "lr": 5e-4, "ema": 0.995,
                     "checkpoint_every": 200},
    },
    "tiny": {
        "unet": {"in_channels": 4, "model_channels": 8, "num_heads": 1, "learn_sigma": False,
                 "patch_size": 16, "norm_groups": 4},
        "training": {"steps": 40, "batch_size": 8, "lr": 2e-3, "ema": 0.9,
                     "checkpoint_every": 10},
    },
}  # fmt: skip
DEFAULT_PRESET = "cpu"


def _field(default: Any, help: str, **meta: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def _preset_steps() -> str:
    return ", ".join(f"{name} {p['training']['steps']}" for name, p in PRESETS.items())


@dataclasses.dataclass
class PretrainConfig:
    """Pretraining of the diffusion model (``pretrain.iter_pretrain``)."""

    preset: str = _field(DEFAULT_PRESET, "network size and training defaults",
                         choices=tuple(PRESETS))  # fmt: skip
    steps: int | None = _field(None, f"training steps (default: the preset's: {_preset_steps()})")
    batch_size: int | None = _field(None, "patches per step (default: the preset's)")
    seed: int = _field(0, "seed of the initialisation, the patches and the noise")

    def pretrain_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ClassifierConfig:
    """The MTMSD heads (``classifier.MTMSDClassifier``) and the Update that continues them."""

    method: str = _field("auto", "'paper': purification + fusion ensemble, as the paper; "
                         "'few-label': RBF-SVM on the edge-aware smoothed scene embedding; "
                         "'auto': few-label below a median of 30 labelled pixels per class",
                         choices=("auto", "paper", "few-label"))  # fmt: skip
    k: int | None = _field(None, "channels kept by purification (default: 60 % of the "
                           "feature channels, the paper's 768 of 1280)")  # fmt: skip
    n_models: int = _field(5, "ensemble size", minimum=1, maximum=20)
    epochs: int = _field(100, "at most this many epochs of a full training",
                         minimum=1, maximum=10_000)  # fmt: skip
    update_epochs: int = _field(5, "epochs of an Update that continues the classifier",
                                minimum=1, maximum=10_000)  # fmt: skip

    def classifier_kwargs(self) -> dict[str, Any]:
        """Keywords of a full training (``pipeline.iter_train``)."""
        kw = {"method": self.method, "n_models": self.n_models, "epochs": self.epochs}
        return kw if self.k is None else {**kw, "k": self.k}


#: The feature settings users set (``features.FeatureSpec`` fields) and their help.
FEATURE_FIELDS: dict[str, str] = {
    "timesteps": "diffusion timesteps, e.g. '50:950:50' (default, the paper's) or '100, 300, 500'",
    "stages": "decoder blocks of the U-Net to read, e.g. '0, 1, 2, 3, 5' (default, the paper's)",
    "noise_draws": "noise fields whose features are averaged (default 3; paper: 1); each costs "
    "one more U-Net pass",
}


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...] | None = None
) -> None:
    """``--flag`` options for the fields of dataclass ``cls`` (all, or ``names``), each with its
    help and its default; unset options parse to ``None`` so the dataclass default applies."""
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        help_text = f.metadata["help"].replace("%", "%%")
        if f.default is not None and "(default" not in help_text:
            help_text += f" (default {f.default})"
        kind = str if isinstance(f.default, str) else int
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=kind, choices=f.metadata.get("choices"),
            help=help_text,
        )  # fmt: skip


def from_arguments(cls: type, args: argparse.Namespace, **extra: Any) -> Any:
    """``cls`` from the options :func:`add_arguments` made (unset ones keep the default)."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }
    return cls(**given, **extra)
