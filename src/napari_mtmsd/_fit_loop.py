"""The training loop of the classifier ensemble (the paper's: Adam, cosine decay to ``min_lr``,
cross-entropy, early stop when a member's training loss stops improving).

All members train together as one stacked model (``fusion.SelectiveFusion``), each with its own
batches, its own early stop and a snapshot of its weights taken when it stops.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._progress import Progress
from .errors import InputError
from .fusion import SelectiveFusion


class EnsembleTrainLoop:
    """One fit: ``run()`` yields a record per batch; afterwards ``model`` holds each member as it
    was when it stopped and :meth:`history` what happened.

    ``x`` and ``g``: purified centre / global features (N, T, k); ``y``: class indices (N,);
    ``stats``: per-channel (mean, std) of each; ``settings``: the classifier's hyperparameters
    (``epochs``, ``batch_size``, ``lr``, ``min_lr``, ``patience``, ``tol``, ``n_models``).
    """

    def __init__(
        self,
        model: SelectiveFusion,
        x: np.ndarray,
        g: np.ndarray,
        y: np.ndarray,
        stats: dict[str, tuple[np.ndarray, np.ndarray]],
        settings: dict[str, Any],
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        self.model, self.device, self.gen, self.s = model, device, generator, settings
        self.opt = _adam(model.parameters(), settings["lr"])
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt, settings["epochs"], eta_min=settings["min_lr"]
        )
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.g = torch.from_numpy(np.ascontiguousarray(g))
        self.y = torch.from_numpy(y.astype(np.int64))
        self.norm = {
            key: tuple(torch.from_numpy(a).to(device) for a in v) for key, v in stats.items()
        }
        self.n = len(y)
        self.bounds = batch_bounds(self.n, settings["batch_size"])
        e = settings["n_models"]
        self.best = np.full(e, np.inf)
        self.wait = np.zeros(e, dtype=int)
        self.active = np.ones(e, dtype=bool)
        self.epochs_run = np.zeros(e, dtype=int)
        self.final_loss = np.zeros(e)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.curve: list[float] = []
        self.step = 0

    def run(self) -> Generator[Progress, None, None]:
        self.model.train()
        for epoch in range(self.s["epochs"]):
            epoch_sum = yield from self._epoch(epoch)
            self.sched.step()
            self._end_epoch(epoch, (epoch_sum / self.n).numpy())
            if not self.active.any():
                break
        self._restore_snapshots()
        self.model.eval()

    def _epoch(self, epoch: int) -> Generator[Progress, None, torch.Tensor]:
        """One pass over the pixels, each member in its own order; the members' loss sums."""
        e_count, total = self.s["n_models"], self.s["epochs"] * len(self.bounds)
        perms = torch.stack([torch.randperm(self.n, generator=self.gen) for _ in range(e_count)])
        epoch_sum = torch.zeros(e_count, dtype=torch.float64)
        seen = 0
        for start, stop in self.bounds:
            loss = self._batch(perms[:, start:stop])  # (E, b): each member its own batch
            epoch_sum += loss * (stop - start)
            seen += stop - start
            self.step += 1
            yield {
                "stage": "train",
                "step": self.step,
                "total": total,
                "loss": float((epoch_sum[self.active] / seen).mean()),
                "epoch": epoch + 1,
                "active": int(self.active.sum()),
            }
        return epoch_sum

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimisation step on the members' batches ``idx`` (E, b); their mean losses."""
        device = self.device
        xb = normalise(self.x[idx].to(device, torch.float32), self.norm["centre"])
        gb = normalise(self.g[idx].to(device, torch.float32), self.norm["glob"])
        logits = self.model(xb, gb)
        loss = (
            F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                self.y[idx].reshape(-1).to(device),
                reduction="none",
            )
            .view(len(idx), -1)
            .mean(dim=1)
        )
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # members share no parameters: independent gradients
        self.opt.step()
        return loss.detach().double().cpu()

    def _end_epoch(self, epoch: int, epoch_loss: np.ndarray) -> None:
        """Early stop: a member whose loss has not improved by ``tol`` for ``patience`` epochs
        stops, and its weights of now are kept."""
        self.curve.append(float(epoch_loss[self.active].mean()))
        for e in np.flatnonzero(self.active):
            self.epochs_run[e], self.final_loss[e] = epoch + 1, epoch_loss[e]
            if epoch_loss[e] < self.best[e] - self.s["tol"]:
                self.best[e], self.wait[e] = epoch_loss[e], 0
            else:
                self.wait[e] += 1
            if self.wait[e] >= self.s["patience"]:
                self.active[e] = False
                self.snapshots[e] = {
                    name: tensor[e].detach().clone()
                    for name, tensor in self.model.state_dict().items()
                }

    def _restore_snapshots(self) -> None:
        with torch.no_grad():
            state = self.model.state_dict()
            for e, snap in self.snapshots.items():
                for name, tensor in snap.items():
                    state[name][e].copy_(tensor)

    def history(self, warm_start: bool) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run.tolist(),
            "final_loss": [float(v) for v in self.final_loss],
            "loss_curve": self.curve,
            "n_train": int(self.n),
            "warm_start": warm_start,
        }


def normalise(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-channel standardisation with (mean, std)."""
    mean, std = stats
    return (x - mean) / std


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch (start, stop) pairs; a trailing batch of one joins the previous (batch norm needs 2)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    if bounds and bounds[-1][1] - bounds[-1][0] < 2:
        raise InputError(f"{n} training pixel(s): expected at least 2")
    return bounds


def _adam(params: Any, lr: float) -> torch.optim.Optimizer:
    """Adam, fused where this torch supports it (several times faster on CPU, same maths)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)
