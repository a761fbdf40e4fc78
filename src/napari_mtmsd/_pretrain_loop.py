"""The pretraining loop: one run's network, EMA copy, optimiser, random generators and step
(everything a checkpoint holds), and the optimisation steps (the shape of improved-diffusion's
``TrainLoop``). ``pretrain.iter_pretrain`` sets it up and drives it."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._patches import PatchSampler
from ._progress import Progress
from .device import ThreadTuner, autocast, bf16_supported, use_bf16
from .errors import DeviceError
from .model import RESUME, DiffusionModel
from .preprocess import Preprocessor
from .schedule import NoiseSchedule
from .unet import UNet, UNetConfig

WARMUP_STEPS = 100
GRAD_CLIP = 1.0
#: On a CPU a step runs as micro-batches of about this many seconds of work (a record and a
#: chance to stop after each), from the training FLOP/s below: one thread of this project's
#: 2-core machine, fwd + bwd, fp32 for the ``cpu`` preset (2.2 GFLOP per 32 x 32 patch, 16 in
#: 0.42 s) and bf16 autocast for ``paper`` (77.5 GFLOP per 48 x 48 patch, 4 in 0.78 s).
TRAIN_UNIT_S = 0.75
TRAIN_FLOPS = {False: 80e9, True: 400e9}


@dataclasses.dataclass
class Dist:
    """This process's place under ``torchrun`` (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclasses.dataclass
class Run:
    """What a run is: preset, seed, settings (steps, batch_size, lr, ema, checkpoint_every),
    precision, where it checkpoints, the source cube's identity, the data pipeline's seed."""

    preset: str
    seed: int
    settings: dict[str, Any]
    precision: str
    out_dir: Path | None
    source: dict[str, Any]
    max_pixels: int
    dist: Dist
    micro_batch: int | None = None  # samples per forward/backward pass; None: by cost


class PretrainLoop:
    """A pretraining run on one cube (its model input, padded by half a patch)."""

    def __init__(
        self,
        run: Run,
        cube: Any,
        parts: tuple[Preprocessor, NoiseSchedule, UNetConfig],
        dev: torch.device,
        compile: bool = False,
    ) -> None:
        self.run_, self.dev, self.s = run, dev, run.settings
        self.pre, self.schedule, cfg = parts
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            unet = UNet(cfg)
        self.p = cfg.patch_size
        self.patches = PatchSampler(cube, self.pre, self.p, dev)
        self.H, self.W, self.C = self.patches.H, self.patches.W, self.patches.C
        self.unet = unet.to(dev).to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=self.s["lr"])
        self.np_rng = np.random.default_rng([run.seed, 0x5EED])
        self.gen = torch.Generator().manual_seed(run.seed)
        self.step = 0
        bf16 = run.precision == "bf16" or (
            run.precision == "auto" and use_bf16(dev, cfg.model_channels)
        )
        self.bf16 = bf16 and bf16_supported(dev)
        self.ddp: Any = None
        self.module = self._wrap(compile)
        self.micro = run.micro_batch or default_micro_batch(self.unet, dev, self.bf16)
        self.pending_rng: tuple[Any, torch.Tensor] | None = None  # of a step under way
        self.elapsed0 = 0.0
        # pretrain.py hands in an adaptive one (device.ThreadTuner); by itself the count stays
        self.tuner = ThreadTuner.for_device(dev, torch.get_num_threads())

    def _wrap(self, compile: bool) -> torch.nn.Module:
        """The module that trains: DDP under torchrun, compiled when asked."""
        module: torch.nn.Module = self.unet
        if self.run_.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dev.index] if self.dev.type == "cuda" else None
            module = self.ddp = DistributedDataParallel(self.unet, device_ids=ids)
        return torch.compile(module) if compile else module

    def restore(self, state: dict[str, Any], ema_state: dict[str, torch.Tensor]) -> None:
        """Continue a checkpointed run exactly where it stopped."""
        self.unet.load_state_dict(state["raw"])
        self.ema.load_state_dict(ema_state)
        self.opt.load_state_dict(state["optimizer"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.gen.set_state(state["torch_rng"])
        self.step = int(state["step"])
        self.elapsed0 = float(state.get("train_seconds", 0.0))

    # the steps -------------------------------------------------------------------------------
    def run(self) -> Generator[Progress, None, DiffusionModel]:
        """Train up to ``steps``, a record per step; checkpoints every ``checkpoint_every``
        steps, at the end and when closed; returns the model with the EMA weights."""
        total, t_start, samples, last_saved = self.s["steps"], time.perf_counter(), 0, self.step
        self.unet.train()
        yield self._record(total, message="training")  # the network is built: a Stop point
        try:
            while self.step < total:
                batch = self.s["batch_size"]
                self.tuner.tick(batch)
                loss = yield from self._optimise(batch)
                if loss is None:  # out of memory: the batch was halved
                    yield self._record(total, message=f"out of memory on {self.dev} with "
                                       f"batch {batch}; retrying with {batch // 2}")  # fmt: skip
                    continue
                self.step += 1
                samples += batch
                elapsed = time.perf_counter() - t_start
                if self.step % self.s["checkpoint_every"] == 0 and self.step < total:
                    self.checkpoint(self.elapsed0 + elapsed)
                    last_saved = self.step
                rate = samples / max(elapsed, 1e-9)
                yield self._record(total, loss=loss, samples_per_s=rate)
        except GeneratorExit:
            if self.step != last_saved:
                self.checkpoint(self.elapsed0 + time.perf_counter() - t_start)
            raise
        elapsed = self.elapsed0 + time.perf_counter() - t_start
        out_dir = self.run_.out_dir
        if self.step != last_saved or (out_dir is not None and not (out_dir / RESUME).is_file()):
            self.checkpoint(elapsed)
        self.ema.eval()
        return DiffusionModel(self.ema, self.schedule, self.pre, self.config(elapsed))

    def _record(self, total: int, **extra: Any) -> Progress:
        record = {"stage": "pretrain", "step": self.step, "total": total, **extra}
        if "loss" in extra:
            record["precision"] = "bf16" if self.bf16 else "fp32"
        return record

    def _batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's share of a global batch: patches (flipped / rotated), timesteps, noise.
        Every rank draws the whole batch, so the generators stay in step."""
        rows = self.np_rng.integers(0, self.H, batch)
        cols = self.np_rng.integers(0, self.W, batch)
        aug = self.np_rng.integers(0, 8, batch)
        t = torch.randint(0, self.schedule.T, (batch,), generator=self.gen)
        noise = torch.randn((batch, self.C, self.p, self.p), generator=self.gen)
        dist = self.run_.dist
        mine = slice(dist.rank, None, dist.world)
        x0 = self.patches.patches(rows[mine], cols[mine], aug[mine])
        dev = self.dev
        noise = noise[mine].to(dev).contiguous(memory_format=torch.channels_last)
        return x0, t[mine].to(dev), noise

    def _optimise(self, batch: int) -> Generator[Progress, None, float | None]:
        """One step on a global batch of ``batch``, in micro-batches whose gradients add up to
        the whole batch's (a record after each when there are several); its loss (mean over
        ranks), or None after running out of memory (the batch is halved for the next try)."""
        self.pending_rng = (self.np_rng.bit_generator.state, self.gen.get_state())
        x0, t, noise = self._batch(batch)
        for group in self.opt.param_groups:
            group["lr"] = self.s["lr"] * min(1.0, (self.step + 1) / WARMUP_STEPS)
        n = len(x0)
        cuts = np.linspace(0, n, -(-n // (self.micro or n)) + 1).round().astype(int)
        try:
            self.opt.zero_grad(set_to_none=True)
            loss = torch.zeros((), device=self.dev)
            for k, (a, b) in enumerate(itertools.pairwise(cuts)):
                last = b == n
                sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
                with sync:
                    loss += self._backward(x0[a:b], t[a:b], noise[a:b], (b - a) / n)
                if len(cuts) > 2:
                    yield self._record(self.s["steps"], micro=k + 1, micros=len(cuts) - 1)
            torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()), GRAD_CLIP)
            self.opt.step()
        except torch.OutOfMemoryError as exc:
            self.pending_rng = None  # the retry draws anew, as an uninterrupted run would
            self._out_of_memory(batch, exc)
            return None
        self.pending_rng = None
        decay = min(self.s["ema"], (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.unet.parameters()),
                                 1.0 - decay)  # fmt: skip
        return self._mean_over_ranks(loss)

    def _backward(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, weight: float
    ) -> torch.Tensor:
        """Gradients of ``weight`` x the loss of one micro-batch, added to the parameters'."""
        x_t = self.schedule.q_sample(x0, t, noise)
        with autocast(self.dev, enabled=self.bf16):
            out = self.module(x_t, t)
        loss = self.schedule.loss(out, x0, x_t, t, noise) * weight
        loss.backward()
        return loss.detach().float()

    def _out_of_memory(self, batch: int, exc: BaseException) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
        if batch // 2 < max(1, self.run_.dist.world):
            raise DeviceError(
                f"out of memory on {self.dev} even with a batch of {batch} patches of "
                f"{self.p}x{self.p}"
            ) from exc
        self.s["batch_size"] = batch // 2

    def _mean_over_ranks(self, loss: torch.Tensor) -> float:
        if self.run_.dist.world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss)
            loss /= self.run_.dist.world
        return float(loss)

    # the record and the checkpoint ---------------------------------------------------------
    def config(self, elapsed: float) -> dict[str, Any]:
        """The model's ``config``: how it was made, so far."""
        run, s, done = self.run_, self.s, self.step
        return {
            "preset": run.preset,
            "source": run.source,
            "seed": run.seed,
            "step": done,
            "total_steps": s["steps"],
            "complete": done >= s["steps"],
            "batch_size": s["batch_size"],
            "lr": s["lr"],
            "ema": s["ema"],
            "precision": "bf16" if self.bf16 else "fp32",
            "world_size": run.dist.world,
            "n_parameters": self.unet.n_parameters,
            "device": self.dev.type,
            # floating-point sums run in another order on another thread count: the same seed
            # reproduces a model bit for bit only with the same, fixed, number of threads
            "num_threads": None
            if self.dev.type != "cpu"
            else "adaptive"
            if self.tuner.adaptive
            else torch.get_num_threads(),
            "preprocessing": {
                "method": "pca+standardise",
                "n_components": self.C,
                "max_pixels": run.max_pixels,
                "seed": run.seed,
            },
            "train_seconds": round(elapsed, 3),
        }

    def checkpoint(self, elapsed: float) -> None:
        """The model so far and the state to resume it (rank 0, when there is an ``out_dir``)."""
        run = self.run_
        if run.out_dir is None or not run.dist.main:
            return
        rngs = (self.np_rng.bit_generator.state, self.gen.get_state())
        resume_state = {
            "step": self.step,
            "raw": {k: v.detach().cpu() for k, v in self.unet.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            # a step stopped half-way is drawn again on resume
            "np_rng": (self.pending_rng or rngs)[0],
            "torch_rng": (self.pending_rng or rngs)[1],
            "settings": dict(self.s),
            "precision": run.precision,
            "preset": run.preset,
            "seed": run.seed,
        }
        model = DiffusionModel(self.ema, self.schedule, self.pre, self.config(elapsed))
        model.save(run.out_dir, resume_state)


def default_micro_batch(unet: UNet, dev: torch.device, bf16: bool) -> int | None:
    """Samples per forward/backward pass: on a CPU as many as take ``TRAIN_UNIT_S`` (a
    backward pass costs about two forward ones); None (the whole batch) on an accelerator,
    which queues its kernels and answers within a second."""
    if dev.type != "cpu":
        return None
    from ._unet_passes import count_layer_flops

    p = unet.config.patch_size
    forward = sum(count_layer_flops(unet, p, p, range(len(unet.output_blocks)))[0])
    return max(1, int(TRAIN_UNIT_S * TRAIN_FLOPS[bf16] // max(3 * forward, 1.0)))
