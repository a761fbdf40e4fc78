"""Pretraining the diffusion U-Net on random unlabelled patches of one cube.

``iter_pretrain`` is a generator (the project's "long work" convention): it yields a progress
record after every optimisation step and returns the ``DiffusionModel`` (EMA weights).

Determinism: patch positions and flips/rotations come from a dedicated numpy Generator, the
timesteps and the noise from a dedicated CPU ``torch.Generator`` (so the draws are the same on
every device), and the model is initialised under ``seed``. Both generator states, the raw
weights, the EMA weights, the optimizer state and the step go into the checkpoint, so a run
stopped at any step (the generator closed, or Ctrl-C in the CLI) and resumed with
``resume=True`` continues exactly as if it had never stopped: closing the generator writes a
checkpoint of the last finished step.

Distributed: under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1) every rank draws the same
global batch from the same generators and trains on its slice ``rank::N`` with
DistributedDataParallel, so N processes compute what one would with the same global batch
(up to float summation order). Only rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _progress
from .config import PRESETS as PRESET_TABLE
from .device import autocast, bf16_supported, cpu_threads, resolve_device, use_bf16
from .errors import DeviceError, InputError, ModelFileError
from .model import RESUME, DiffusionModel
from .preprocess import Preprocessor, as_cube
from .schedule import NoiseSchedule
from .unet import PRESETS, UNet

WARMUP_STEPS = 100
GRAD_CLIP = 1.0


@dataclasses.dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owned = False
    if not dist.is_initialized():
        want_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owned = True
    return _Dist(rank=rank, world=world, local_rank=local_rank, owned=owned)


def _dihedral_indices(
    rows: np.ndarray, cols: np.ndarray, aug: np.ndarray, p: int
) -> tuple[np.ndarray, np.ndarray]:
    """(B, p, p) row and column indices of patches at top-left (rows, cols), each under one of
    the 8 flips/rotations (bit 0: transpose, bit 1: flip rows, bit 2: flip columns)."""
    ar = np.arange(p)
    i = np.broadcast_to(ar[None, :, None], (len(rows), p, p))
    j = np.broadcast_to(ar[None, None, :], (len(rows), p, p))
    transpose = (aug & 1).astype(bool)[:, None, None]
    a, b = np.where(transpose, j, i), np.where(transpose, i, j)
    a = np.where((aug & 2).astype(bool)[:, None, None], p - 1 - a, a)
    b = np.where((aug & 4).astype(bool)[:, None, None], p - 1 - b, b)
    return rows[:, None, None] + a, cols[:, None, None] + b


def _resolve_settings(preset: str, **given: Any) -> dict[str, Any]:
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)}")
    settings = dict(PRESET_TABLE[preset]["training"])
    for key, value in given.items():
        if value is not None:
            settings[key] = value
    for key in ("steps", "batch_size", "checkpoint_every"):
        if int(settings[key]) < 1:
            raise InputError(f"{key} must be a positive integer, got {settings[key]}")
        settings[key] = int(settings[key])
    if not 0.0 <= float(settings["ema"]) < 1.0:
        raise InputError(f"ema must be in [0, 1), got {settings['ema']}")
    if not float(settings["lr"]) > 0:
        raise InputError(f"lr must be positive, got {settings['lr']}")
    return settings


def iter_pretrain(
    cube: Any,
    preset: str = "cpu",
    steps: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    compile: bool = False,
    lr: float | None = None,
    ema: float | None = None,
    precision: str = "auto",
    checkpoint_every: int | None = None,
    max_pixels: int = 200_000,
    num_threads: int | None = None,
) -> Generator[dict[str, Any], None, DiffusionModel]:
    """Pretrain a diffusion U-Net on ``cube``; yields progress records, returns the model.

    ``steps`` is the total number of optimisation steps of the run (a resumed run continues up
    to it); ``batch_size`` is the global batch. ``precision``: ``"auto"`` (bf16 autocast where it
    pays, see ``use_bf16``), ``"bf16"`` (wherever supported) or ``"fp32"``. Checkpoints go to
    ``out_dir`` every ``checkpoint_every`` steps, at the end and when the generator is closed.
    ``num_threads``: CPU threads while training (default: see ``device.cpu_threads``).
    """
    cube = as_cube(cube)
    given = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "ema": ema,
        "checkpoint_every": checkpoint_every,
    }
    _resolve_settings(preset, **given)  # validate early, before any work
    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    out_dir = Path(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise InputError("resume=True needs out_dir, the model directory to resume from")

    dist_info = _init_distributed(str(device))
    threads_before = torch.get_num_threads()
    try:
        dev = resolve_device(device)
        if dev.type == "cpu":
            torch.set_num_threads(cpu_threads(num_threads))
        if dist_info.world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", dist_info.local_rank)
            torch.cuda.set_device(dev)
        model = yield from _train(
            cube,
            preset,
            given,
            dev,
            int(seed),
            out_dir,
            resume,
            compile,
            precision,
            max_pixels,
            dist_info,
        )
        if dist_info.world > 1:
            # rank 0 may still be writing the model: a rank that tore the group down meanwhile
            # made the other abort at exit ("terminate called without an active exception").
            # Only on success: after a failure the other rank may never arrive.
            import torch.distributed as dist

            dist.barrier()
        return model
    finally:
        torch.set_num_threads(threads_before)
        if dist_info.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    cube, preset, given, dev, seed, out_dir, resume, compile, precision, max_pixels, dist_info
) -> Generator[dict[str, Any], None, DiffusionModel]:
    source = {"name": str(cube.name), "shape": list(cube.shape), "sha256": cube.sha256()}
    state = None
    if resume and out_dir is not None and (out_dir / RESUME).is_file():
        state, base = _load_resume(out_dir, source, preset, seed)
        pre, schedule, unet_cfg = base.preprocessor, base.schedule, base.unet.config
        ema_state = base.unet.state_dict()
        explicit = {k: v for k, v in given.items() if v is not None}
        s = _resolve_settings(preset, **{**state["settings"], **explicit})
        precision = state["precision"]
    else:
        s = _resolve_settings(preset, **given)
        if resume:
            yield {
                "stage": "pretrain",
                "step": 0,
                "total": s["steps"],
                "message": f"no checkpoint in {out_dir}; starting from step 0",
            }
        base_cfg = PRESETS[preset]
        n_comp = min(base_cfg.in_channels, cube.n_bands)
        yield {
            "stage": "pretrain",
            "step": 0,
            "total": s["steps"],
            "message": f"fitting PCA ({cube.n_bands} bands -> {n_comp} components)",
        }
        pre = Preprocessor.fit(cube, n_comp, max_pixels=max_pixels, seed=seed)
        schedule = NoiseSchedule("cosine", 1000)
        unet_cfg = dataclasses.replace(base_cfg, in_channels=n_comp)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet(unet_cfg)
    x = DiffusionModel(unet, schedule, pre).prepare(cube)  # (H, W, C), invalid pixels at 0
    H, W, C = x.shape
    p = unet_cfg.patch_size
    half = p // 2
    xpad = np.pad(x, ((half, p - half), (half, p - half), (0, 0)), mode="reflect")
    xpad_t = torch.from_numpy(np.ascontiguousarray(xpad.transpose(2, 0, 1))).to(dev)

    unet = unet.to(dev).to(memory_format=torch.channels_last)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=s["lr"])
    np_rng = np.random.default_rng([seed, 0x5EED])
    gen = torch.Generator().manual_seed(seed)
    step = 0
    if state is not None:
        unet.load_state_dict(state["raw"])
        ema_unet.load_state_dict(ema_state)
        opt.load_state_dict(state["optimizer"])
        np_rng.bit_generator.state = state["np_rng"]
        gen.set_state(state["torch_rng"])
        step = int(state["step"])
    bf16 = precision == "bf16" or (precision == "auto" and use_bf16(dev, unet_cfg.model_channels))
    bf16 = bf16 and bf16_supported(dev)

    train_module: torch.nn.Module = unet
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_module = DistributedDataParallel(
            unet, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    if compile:
        train_module = torch.compile(train_module)

    total = s["steps"]
    ema_params = list(ema_unet.parameters())
    params = list(unet.parameters())

    def config(done: int, elapsed: float) -> dict:
        return {
            "preset": preset,
            "source": source,
            "seed": seed,
            "step": done,
            "total_steps": total,
            "complete": done >= total,
            "batch_size": s["batch_size"],
            "lr": s["lr"],
            "ema": s["ema"],
            "precision": "bf16" if bf16 else "fp32",
            "world_size": dist_info.world,
            "n_parameters": unet.n_parameters,
            "device": dev.type,
            # floating-point sums run in another order on another thread count: the same seed
            # reproduces a model bit for bit only with the same number of threads
            "num_threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "preprocessing": {
                "method": "pca+standardise",
                "n_components": C,
                "max_pixels": max_pixels,
                "seed": seed,
            },
            "train_seconds": round(elapsed, 3),
        }

    def checkpoint(done: int, elapsed: float) -> None:
        if out_dir is None or not dist_info.main:
            return
        resume_state = {
            "step": done,
            "raw": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
            "optimizer": opt.state_dict(),
            "np_rng": np_rng.bit_generator.state,
            "torch_rng": gen.get_state(),
            "settings": dict(s),
            "precision": precision,
            "preset": preset,
            "seed": seed,
        }
        DiffusionModel(ema_unet, schedule, pre, config(done, elapsed)).save(out_dir, resume_state)

    elapsed0 = float(state.get("train_seconds", 0.0)) if state else 0.0
    t_start = time.perf_counter()
    samples = 0
    last_saved = step
    unet.train()
    try:
        while step < total:
            B = s["batch_size"]
            rows = np_rng.integers(0, H, B)
            cols = np_rng.integers(0, W, B)
            aug = np_rng.integers(0, 8, B)
            t = torch.randint(0, schedule.T, (B,), generator=gen)
            noise = torch.randn((B, C, p, p), generator=gen)
            mine = slice(dist_info.rank, None, dist_info.world)
            ri, ci = _dihedral_indices(rows[mine], cols[mine], aug[mine], p)
            x0 = xpad_t[:, torch.from_numpy(ri).to(dev), torch.from_numpy(ci).to(dev)]
            x0 = x0.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
            t_loc = t[mine].to(dev)
            noise_loc = noise[mine].to(dev).contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = s["lr"] * min(1.0, (step + 1) / WARMUP_STEPS)
            try:
                x_t = schedule.q_sample(x0, t_loc, noise_loc)
                with autocast(dev, enabled=bf16):
                    out = train_module(x_t, t_loc)
                loss = schedule.loss(out, x0, x_t, t_loc, noise_loc)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                opt.step()
            except torch.OutOfMemoryError as exc:
                opt.zero_grad(set_to_none=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if B // 2 < max(1, dist_info.world):
                    raise DeviceError(
                        f"out of memory on {dev} even with a batch of {B} patches of {p}x{p}"
                    ) from exc
                s["batch_size"] = B // 2
                yield {
                    "stage": "pretrain",
                    "step": step,
                    "total": total,
                    "message": f"out of memory on {dev} with batch {B}; retrying with {B // 2}",
                }
                continue
            decay = min(s["ema"], (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - decay)
            loss_value = loss.detach().float()
            if dist_info.world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_value)
                loss_value /= dist_info.world
            step += 1
            samples += B
            elapsed = time.perf_counter() - t_start
            if step % s["checkpoint_every"] == 0 and step < total:
                checkpoint(step, elapsed0 + elapsed)
                last_saved = step
            yield {
                "stage": "pretrain",
                "step": step,
                "total": total,
                "loss": float(loss_value),
                "samples_per_s": samples / max(elapsed, 1e-9),
                "precision": "bf16" if bf16 else "fp32",
            }
    except GeneratorExit:
        if step != last_saved:
            checkpoint(step, elapsed0 + time.perf_counter() - t_start)
        raise
    elapsed = elapsed0 + time.perf_counter() - t_start
    if step != last_saved or (out_dir is not None and not (out_dir / RESUME).is_file()):
        checkpoint(step, elapsed)
    ema_unet.eval()
    return DiffusionModel(ema_unet, schedule, pre, config(step, elapsed))


def _load_resume(out_dir: Path, source: dict, preset: str, seed: int):
    cfg = DiffusionModel.read_config(out_dir)
    resume_file = DiffusionModel.check_file(out_dir, cfg, RESUME)
    base = DiffusionModel.load(out_dir)
    try:
        state = torch.load(resume_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the file is unusable
        raise ModelFileError(f"cannot read the resume state {resume_file}: {exc}") from exc
    if cfg.get("source", {}).get("sha256") != source["sha256"]:
        raise InputError(
            f"cannot resume: {out_dir} was pretrained on {cfg.get('source', {}).get('name')!r} "
            f"{cfg.get('source', {}).get('shape')}, not on this cube {source['name']!r} "
            f"{source['shape']}"
        )
    for key, value in (("preset", preset), ("seed", seed)):
        if state.get(key) != value:
            raise InputError(
                f"cannot resume: {out_dir} was pretrained with {key}={state.get(key)!r}, "
                f"not {key}={value!r}"
            )
    state["train_seconds"] = cfg.get("train_seconds", 0.0)
    return state, base


def pretrain(
    cube: Any,
    preset: str = "cpu",
    steps: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    callback: _progress.Callback | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    compile: bool = False,
    **kwargs: Any,
) -> DiffusionModel:
    """Pretrain and return the model; ``callback`` sees each progress record (see
    ``iter_pretrain`` for the other arguments)."""
    return _progress.run(
        iter_pretrain(
            cube,
            preset=preset,
            steps=steps,
            batch_size=batch_size,
            device=device,
            seed=seed,
            out_dir=out_dir,
            resume=resume,
            compile=compile,
            **kwargs,
        ),
        callback,
    )
