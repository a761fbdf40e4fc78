"""``DiffusionModel``: the U-Net (EMA weights), its noise schedule and its input transform.

A model directory holds

* ``config.json``: ``format_version``, preset, architecture, schedule, preprocessing settings,
  the source cube (name, shape, sha256), band count, seed, step, ``n_parameters``, package and
  torch versions, and the sha256 of each of the other files (so a flipped byte is caught);
* ``weights.safetensors``: the EMA weights of the U-Net;
* ``preprocess.safetensors``: the PCA / scaler arrays;
* optionally ``resume.pt``: the state needed to continue pretraining (see ``pretrain.py``).

The directory is written atomically as a whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._atomic import atomic_dir, restore, sha256_file, verify
from ._versioned import read_json
from ._weights import assign, empty
from .errors import InputError, ModelFileError
from .preprocess import Preprocessor, as_cube
from .schedule import NoiseSchedule
from .unet import UNet, UNetConfig

FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
PREPROCESS = "preprocess.safetensors"
RESUME = "resume.pt"


def _hash_tensors(h: Any, tensors: dict[str, Any]) -> None:
    for key in sorted(tensors):
        value = tensors[key]
        arr = (
            value.detach().cpu().contiguous().numpy()
            if torch.is_tensor(value)
            else np.asarray(value)
        )
        arr = np.ascontiguousarray(arr)
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())


#: Accepted ranges of config.json values: every preset sits well inside, and a value outside
#: (T = 1e9, a million res blocks) would allocate or build without end before any check.
RANGES: dict[str, tuple[int, int]] = {
    "in_channels": (1, 1024),
    "model_channels": (1, 1024),
    "num_res_blocks": (1, 16),
    "num_heads": (1, 64),
    "norm_groups": (1, 256),
    "patch_size": (2, 1024),
    "T": (2, 100_000),
    "n_bands": (1, 100_000),
}


def _check_ranges(cfg: dict, cfg_path: Path) -> None:
    """ModelFileError naming the first value of ``config.json`` outside its range or shape."""
    arch, sched = cfg["architecture"], cfg["schedule"]
    values = {**arch, "T": sched.get("T"), "n_bands": cfg.get("n_bands")}
    for key, (lo, hi) in RANGES.items():
        v = values.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise ModelFileError(f"{cfg_path}: {key} = {v!r}, expected an integer in {lo}..{hi}")
    mult, attn = arch.get("channel_mult"), arch.get("attention_resolutions", [])
    for key, seq, most in (("channel_mult", mult, 16), ("attention_resolutions", attn, 2**8)):
        ok = isinstance(seq, list) and len(seq) <= 8 and (key != "channel_mult" or seq)
        if not (ok and all(isinstance(m, int) and 1 <= m <= most for m in seq)):
            raise ModelFileError(
                f"{cfg_path}: {key} = {seq!r}, expected a list of at most 8 integers in 1..{most}"
            )
    mc = arch["model_channels"]
    for key in ("norm_groups", "num_heads"):
        if mc % arch[key]:
            raise ModelFileError(f"{cfg_path}: model_channels {mc} is not divisible by {key}")
    if sched.get("kind") not in ("cosine", "linear"):
        raise ModelFileError(
            f"{cfg_path}: schedule kind {sched.get('kind')!r}, expected cosine or linear"
        )


class DiffusionModel:
    """A pretrained denoising U-Net with everything needed to feed it a new cube."""

    def __init__(
        self,
        unet: UNet,
        schedule: NoiseSchedule,
        preprocessor: Preprocessor,
        config: dict | None = None,
    ):
        if preprocessor.n_components != unet.config.in_channels:
            raise ValueError(
                f"preprocessor gives {preprocessor.n_components} components but the U-Net takes "
                f"{unet.config.in_channels} input channels"
            )
        self.unet = unet
        self.schedule = schedule
        self.preprocessor = preprocessor
        self.config = dict(config or {})

    @property
    def patch_size(self) -> int:
        return int(self.unet.config.patch_size)

    @property
    def n_components(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def n_bands(self) -> int:
        return self.preprocessor.n_bands

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> DiffusionModel:
        self.unet.to(device)
        return self

    def check_bands(self, cube: Any) -> None:
        """InputError unless ``cube`` has the band count this model was pretrained on."""
        if cube.n_bands != self.n_bands:
            source = self.config.get("source", {}).get("name", "?")
            raise InputError(
                f"{cube.name} has {cube.n_bands} bands but this model was pretrained on cubes "
                f"with {self.n_bands} bands (source: {source})"
            )

    def prepare(self, cube: Any) -> np.ndarray:
        """(H, W, C) float32 model input; invalid pixels (NaN, ignore value in a band the model
        uses) become 0."""
        cube = as_cube(cube)
        self.check_bands(cube)
        x = self.preprocessor.transform(cube.data, name=cube.name)
        x[~np.asarray(cube.valid_mask(self.preprocessor.good_bands), dtype=bool)] = 0.0
        return np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)

    def full_config(self) -> dict:
        cfg = {k: v for k, v in self.config.items() if k != "path"}  # path: where it was loaded
        cfg.update(
            format_version=FORMAT_VERSION,
            architecture=self.unet.config.to_dict(),
            schedule=self.schedule.to_dict(),
            n_bands=self.n_bands,
            n_components=self.n_components,
            bad_bands=self.preprocessor.bad_bands,
            n_parameters=self.unet.n_parameters,
            package_version=__version__,
            torch_version=torch.__version__,
        )
        return cfg

    def fingerprint(self) -> str:
        """sha256 of the weights, the preprocessing and the architecture/schedule: a cache key
        that is the same for a model and its saved-then-loaded copy."""
        h = hashlib.sha256()
        essentials = {
            "format_version": FORMAT_VERSION,
            "architecture": self.unet.config.to_dict(),
            "schedule": self.schedule.to_dict(),
        }
        h.update(json.dumps(essentials, sort_keys=True).encode())
        _hash_tensors(h, self.unet.state_dict())
        _hash_tensors(h, self.preprocessor.to_arrays())
        return h.hexdigest()

    def save(self, path: str | os.PathLike, resume_state: dict | None = None) -> Path:
        """Write the model directory atomically (replacing any previous one)."""
        from safetensors.numpy import save_file as save_numpy
        from safetensors.torch import save_file as save_torch

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
        with atomic_dir(path, kind="model") as tmp:
            save_torch(state, str(tmp / WEIGHTS))
            save_numpy(self.preprocessor.to_arrays(), str(tmp / PREPROCESS))
            files = [WEIGHTS, PREPROCESS]
            if resume_state is not None:
                torch.save(resume_state, tmp / RESUME)
                files.append(RESUME)
            cfg = self.full_config()
            cfg["files"] = {name: sha256_file(tmp / name) for name in files}
            (tmp / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        return path

    @classmethod
    def read_config(cls, path: str | os.PathLike) -> dict:
        """Parse and check ``config.json`` of a model directory."""
        path = Path(path)
        restore(path)
        if not path.is_dir():
            raise ModelFileError(f"model directory {path} does not exist")
        cfg_path = path / CONFIG
        cfg = read_json(
            cfg_path, FORMAT_VERSION, "a napari-mtmsd model directory", "pretrain the model again"
        )
        for key in ("architecture", "schedule", "files"):
            if not isinstance(cfg.get(key), dict):
                raise ModelFileError(f"{cfg_path} lacks the {key!r} section")
        _check_ranges(cfg, cfg_path)
        return cfg

    @classmethod
    def check_file(cls, path: Path, cfg: dict, name: str) -> Path:
        """The path of ``name`` in the model dir, after checking it exists and matches its hash."""
        file = path / name
        if not file.is_file():
            raise ModelFileError(f"{file} is missing")
        expected = cfg["files"].get(name)
        if expected is None:
            raise ModelFileError(f"{path / CONFIG} does not list {name}")
        if sha256_file(file) != expected:
            raise ModelFileError(
                f"{file} is corrupt or truncated (its sha256 differs from the one recorded in "
                f"{CONFIG}): pretrain or copy the model again"
            )
        return file

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> DiffusionModel:
        """Read and check a model directory; every problem raises ``ModelFileError``."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file as load_numpy
        from safetensors.torch import load_file as load_torch

        path = Path(path)
        cfg = cls.read_config(path)
        weights_file = cls.check_file(path, cfg, WEIGHTS)
        pre_file = cls.check_file(path, cfg, PREPROCESS)
        try:
            state = load_torch(str(weights_file))
            arrays = load_numpy(str(pre_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"cannot read the weights in {path}: {exc}") from exc
        try:
            unet_cfg = UNetConfig.from_dict(cfg["architecture"])
            schedule = NoiseSchedule.from_dict(cfg["schedule"])
            unet = empty(lambda: UNet(unet_cfg))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(
                f"{path / CONFIG}: invalid architecture or schedule ({exc})"
            ) from exc
        try:
            assign(unet, state)
        except RuntimeError as exc:
            raise ModelFileError(
                f"{weights_file} does not match the architecture in {CONFIG}: {exc}"
            ) from exc
        try:
            pre = Preprocessor.from_arrays(arrays)
        except ValueError as exc:
            raise ModelFileError(f"{pre_file}: {exc}") from exc
        if pre.n_components != unet_cfg.in_channels or pre.n_bands != cfg.get("n_bands"):
            raise ModelFileError(
                f"{pre_file} maps {pre.n_bands} bands to {pre.n_components} components, but "
                f"{CONFIG} says {cfg.get('n_bands')} bands and {unet_cfg.in_channels} components"
            )
        verify(path)  # config.json too, and anything else the save wrote
        unet.eval()
        keep = {k: v for k, v in cfg.items() if k != "files"}
        keep["path"] = str(path)
        from .device import resolve_device

        return cls(unet.to(resolve_device(device)), schedule, pre, keep)
