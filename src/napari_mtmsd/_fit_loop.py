"""How the classifier trains: its starting point (a fresh purification and ensemble, or the
classifier it continues) and the loop (the paper's: Adam, cosine decay to ``min_lr``,
cross-entropy, early stop when a member's training loss stops improving).

All members train together as one stacked model (``fusion.SelectiveFusion``), each with its own
batches, its own early stop and a snapshot of its weights taken when it stops.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Generator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._progress import Progress, imported, waiting
from .errors import InputError
from .fusion import SelectiveFusion
from .purification import select_channels

_ROWS = 256  # rows per chunk of the channel statistics (bounded memory)
Start = tuple[SelectiveFusion, tuple[np.ndarray, np.ndarray], dict | None, list[str]]


def check_labels(y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The classes of ``y`` (N,) and each pixel's index into them; InputError unless one
    integer label >= 1 per pixel, of at least 2 classes."""
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise InputError(f"{len(y)} labels for {n} pixels: expected one per pixel")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 1):
        raise InputError("training labels: expected integers >= 1 (0 means unlabelled)")
    classes, y_idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise InputError(f"training labels hold {len(classes)} class: expected at least 2")
    return classes, y_idx


def fresh(
    centre: np.ndarray,
    glob: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    settings: dict[str, Any],
    gen: torch.Generator,
    device: torch.device,
    record: Progress,
) -> Generator[Progress, None, Start]:
    """The starting point of a full fit: ``k`` channels of each feature type purified on ``y``
    (clipped to what there is, with a warning; ``record`` yielded meanwhile), a new ensemble;
    the statistics of the purified channels follow (None)."""
    notes = []
    want = settings["k"]
    k = min(want, centre.shape[2], glob.shape[2])
    if k < want:
        notes.append(f"k={want} clipped to {k}: the features have only {k} channels")
        warnings.warn(notes[-1], stacklevel=4)
    purify = {"lam": settings["lam"], "timestep_weight": settings["timestep_weight"]}
    idx = []
    for features in (centre, glob):  # seconds each with the paper's features: in a thread
        work = functools.partial(select_channels, features, y, k, **purify)
        idx.append((yield from waiting(work, record)))
    # the paper's ensemble holds 100 M weights: their seeded draw is a second of work
    build = functools.partial(
        SelectiveFusion, k, centre.shape[1], n_classes, settings["n_models"], generator=gen
    )
    model = yield from waiting(build, record)
    return model.to(device), (idx[0], idx[1]), None, notes


def continued(
    warm_start: Any,
    y: np.ndarray,
    centre: np.ndarray,
    glob: np.ndarray,
    n_models: int,
    device: torch.device,
) -> Start:
    """The starting point of a warm start: the fitted classifier's purification, statistics
    and (a copy of its) weights; InputError when it cannot be continued on these inputs."""
    reason = warm_start.warm_start_mismatch(y, n_models, centre, glob)
    if reason is not None:
        raise InputError(f"cannot continue from that classifier: {reason}")
    idx = (warm_start.purification_["centre"], warm_start.purification_["glob"])
    model = copy.deepcopy(warm_start.model_).to(device)
    n_before = warm_start.history_["n_train"]
    notes = [f"continued from a classifier trained on {n_before} pixels"]
    return model, idx, warm_start.stats_, notes


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


def iter_start(
    centre: np.ndarray,
    glob: np.ndarray,
    y: tuple[np.ndarray, np.ndarray],
    settings: dict[str, Any],
    gen: torch.Generator,
    device: torch.device,
    warm_start: Any,
) -> Generator[Progress, None, tuple[Start, np.ndarray, np.ndarray]]:
    """The fit's starting point (fresh or continued) and its purified inputs, with a record
    between the set-up's units (purification, initialisation, gathering, statistics, the first
    optimiser's import: seconds with the paper's features). ``y``: (classes, each pixel's
    index into them)."""
    classes, y_idx = y
    total = settings["epochs"] * len(batch_bounds(len(y_idx), settings["batch_size"]))
    record = {"stage": "train", "step": 0, "total": total}
    if warm_start is not None:
        start = continued(warm_start, classes[y_idx], centre, glob, settings["n_models"], device)
    else:
        args = (centre, glob, classes[y_idx], len(classes), settings, gen, device, record)
        start = yield from fresh(*args)
    model, idx, stats, notes = start
    xc = yield from gathered(centre, idx[0], record)
    xg = yield from gathered(glob, idx[1], record)
    if stats is None:
        stats = {"centre": channel_stats(xc, settings["standardize"])}
        yield record
        stats["glob"] = channel_stats(xg, settings["standardize"])
    # the first torch optimiser of a process imports torch._dynamo: ~1 s that cannot be cut
    yield from imported("torch._dynamo", record)
    return (model, idx, stats, notes), xc, xg


def gathered(
    x: np.ndarray, idx: np.ndarray, record: Progress
) -> Generator[Progress, None, np.ndarray]:
    """``x[:, :, idx]`` copied ``_ROWS`` x 8 pixels at a time, ``record`` after each chunk
    (``np.take``: 0.016 against 0.20 s by fancy indexing for 1025 paper-preset pixels)."""
    out = np.empty((*x.shape[:2], len(idx)), x.dtype)
    for start in range(0, len(x), 8 * _ROWS):
        rows = slice(start, start + 8 * _ROWS)
        np.take(np.asarray(x[rows]), idx, axis=2, out=out[rows])
        yield record
    return out


def channel_stats(x: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over pixels and timesteps (float64 sums in row chunks)."""
    d = x.shape[2]
    if not standardize:
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    total, squares, count = np.zeros(d), np.zeros(d), 0
    for start in range(0, len(x), _ROWS):
        chunk = np.asarray(x[start : start + _ROWS], dtype=np.float64).reshape(-1, d)
        total += chunk.sum(axis=0)
        squares += np.einsum("nd,nd->d", chunk, chunk)
        count += len(chunk)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-6 * max(float(np.abs(mean).max()), 1.0), std, 1.0)  # constant channels
    return mean.astype(np.float32), std.astype(np.float32)
