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

import dataclasses
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import torch

from ._atomic import restore
from ._console import run_with_bar
from ._pretrain_loop import Dist, PretrainLoop, Run
from ._progress import Callback, imported
from .config import PRESETS as PRESET_TABLE
from .device import ThreadTuner, resolve_device
from .errors import InputError, ModelFileError
from .model import RESUME, DiffusionModel
from .preprocess import Preprocessor, as_cube
from .schedule import NoiseSchedule
from .unet import PRESETS


def _init_distributed(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owned = False
    if not dist.is_initialized():
        want_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owned = True
    return Dist(rank=rank, world=world, local_rank=local_rank, owned=owned)


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
    micro_batch: int | None = None,
) -> Generator[dict[str, Any], None, DiffusionModel]:
    """Pretrain a diffusion U-Net on ``cube``; yields progress records, returns the model.

    ``steps`` is the total number of optimisation steps of the run (a resumed run continues up
    to it); ``batch_size`` is the global batch. ``precision``: ``"auto"`` (bf16 autocast where it
    pays, see ``use_bf16``), ``"bf16"`` (wherever supported) or ``"fp32"``. Checkpoints go to
    ``out_dir`` every ``checkpoint_every`` steps, at the end and when the generator is closed.
    ``num_threads``: CPU threads while training (default: chosen and re-chosen from measured
    step times, see ``device.ThreadTuner``; a fixed count makes a seed reproducible bit for bit).
    ``micro_batch``: samples per forward/backward pass on this process; a step adds up the
    gradients of its micro-batches (the same step to float rounding) and yields a record after
    each, so a record comes within a second of work. Default: on a CPU as many as take about
    0.75 s (the ``paper`` preset: 3 of 32; ``cpu`` and ``tiny``: the whole batch), on an
    accelerator the whole batch.
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
    if micro_batch is not None and int(micro_batch) < 1:
        raise InputError(f"micro_batch must be a positive integer, got {micro_batch}")
    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"precision must be 'auto', 'bf16' or 'fp32', got {precision!r}")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        restore(out_dir)  # a checkpoint hidden by a kill mid-save is the one to resume
    if resume and out_dir is None:
        raise InputError("resume=True needs out_dir, the model directory to resume from")

    dist_info = _init_distributed(str(device))
    threads_before = torch.get_num_threads()
    try:
        dev = resolve_device(device)
        tuner = ThreadTuner.for_device(dev, num_threads)
        if dist_info.world > 1 and dev.type == "cuda":
            dev = torch.device("cuda", dist_info.local_rank)
            torch.cuda.set_device(dev)
        data = (max_pixels, micro_batch)
        model = yield from _train(cube, preset, given, dev, int(seed), out_dir, resume, compile,
                                  precision, data, dist_info, tuner)  # fmt: skip
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
    cube: Any,
    preset: str,
    given: dict[str, Any],
    dev: torch.device,
    seed: int,
    out_dir: Path | None,
    resume: bool,
    compile: bool,
    precision: str,
    data: tuple[int, int | None],
    dist_info: Dist,
    tuner: ThreadTuner,
) -> Generator[dict[str, Any], None, DiffusionModel]:
    """Set up the run (from the checkpoint in ``out_dir`` when resuming) and drive its loop."""
    max_pixels, micro_batch = data
    digest = yield from cube.iter_sha256()  # a record per chunk: a big scene takes seconds
    source = {"name": str(cube.name), "shape": list(cube.shape), "sha256": digest}
    if resume and out_dir is not None and (out_dir / RESUME).is_file():
        state, base = _load_resume(out_dir, source, preset, seed)
        explicit = {k: v for k, v in given.items() if v is not None}
        settings = _resolve_settings(preset, **{**state["settings"], **explicit})
        parts = (base.preprocessor, base.schedule, base.unet.config)
        run = Run(preset, seed, settings, state["precision"], out_dir, source, max_pixels,
                  dist_info, micro_batch)  # fmt: skip
        restore = (state, base.unet.state_dict())
    else:
        settings = _resolve_settings(preset, **given)
        if resume:
            yield {"stage": "pretrain", "step": 0, "total": settings["steps"],
                   "message": f"no checkpoint in {out_dir}; starting from step 0"}  # fmt: skip
        base_cfg = PRESETS[preset]
        n_comp = min(base_cfg.in_channels, cube.n_bands)
        yield {"stage": "pretrain", "step": 0, "total": settings["steps"],
               "message": f"fitting PCA ({cube.n_bands} bands -> {n_comp} components)"}  # fmt: skip
        pre = Preprocessor.fit(cube, n_comp, max_pixels=max_pixels, seed=seed)
        yield {"stage": "pretrain", "step": 0, "total": settings["steps"],
               "message": "preparing the patches and the network"}  # fmt: skip
        parts = (
            pre,
            NoiseSchedule("cosine", 1000),
            dataclasses.replace(base_cfg, in_channels=n_comp),
        )
        run = Run(preset, seed, settings, precision, out_dir, source, max_pixels, dist_info,
                  micro_batch)  # fmt: skip
        restore = None
    # the first torch optimiser of a process imports torch._dynamo: ~1 s that cannot be cut
    yield from imported("torch._dynamo", {"stage": "pretrain", "step": 0,
                                          "total": settings["steps"]})  # fmt: skip
    loop = PretrainLoop(run, cube, parts, dev, compile)
    if restore is not None:
        loop.restore(*restore)
    loop.tuner = tuner
    return (yield from loop.run())


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
    callback: Callback | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    compile: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> DiffusionModel:
    """Pretrain and return the model (see ``iter_pretrain`` for the arguments); a tqdm bar
    shows the steps, loss and time left unless ``progress=False`` or ``callback`` sees each
    progress record instead."""
    return run_with_bar(
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
        "Pretrain",
        progress,
        callback,
    )
