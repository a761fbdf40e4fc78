"""MTMSD classifier: purification + an ensemble of selective-fusion models (method.md 4-5): the
estimator (fit, predict, purified features, attention); how it trains is ``_fit_loop``, its
files ``classifier_file``.

Training follows the paper (Adam, cosine decay to ``min_lr`` over ``epochs``, batch 64,
cross-entropy, early stop when the training loss stops improving, 5 independently initialised
members, majority vote) with two deliberate additions: the purified features are standardised
per channel (statistics of the training pixels over all timesteps, so the relative scale of the
timesteps is kept), since diffusion activations have arbitrary scales and the attention layers
see them raw; and all members train together as one stacked model (see ``fusion.py``), each with
its own batches, its own early stop and a snapshot of its weights taken when it stops.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import classifier_file
from ._atomic import verify
from ._fit_loop import EnsembleTrainLoop, check_labels, iter_start, normalise
from ._progress import Callback, Progress, run
from ._weights import assign, empty
from .device import bf16_supported, cpu_threads, resolve_device
from .errors import InputError, ModelFileError
from .fusion import SelectiveFusion

#: Pixels per inference batch. The (members, pixels, timesteps, k) intermediates of a small batch
# stay in the CPU caches: predicting all of Indian Pines (5 members, k = 192) took 4.2 s at 256
# rows against 15.6 s at 4096 on this project's 2-core machine.
_ROWS = 256


class MTMSDClassifier:
    """Purified centre/global diffusion features ``(N, T, D)`` -> class labels.

    ``k`` channels are kept per feature type (clipped to ``D`` with a warning). ``patience``
    epochs in which a member's mean training loss does not fall below its best by more than
    ``tol`` stop that member (a near-zero loss that still creeps down is "not improving").
    ``classes_`` holds the label values seen in ``fit``; ``predict`` returns them. ``bf16``:
    prediction's attention over timesteps in bf16 where the device has native bf16 (whole-scene
    prediction about 2x faster on this project's AVX-512-BF16 CPU; on Indian Pines 99.9 % of
    the predicted labels unchanged and the same test OA).
    """

    def __init__(
        self,
        k: int = 768,
        n_models: int = 5,
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        min_lr: float = 5e-6,
        patience: int = 5,
        tol: float = 1e-3,
        standardize: bool = True,
        lam: float = 0.8,
        timestep_weight: float = 0.5,
        seed: int = 0,
        device: str = "cpu",
        bf16: bool = True,
    ):
        for name, value in (("k", k), ("n_models", n_models), ("epochs", epochs)):
            if int(value) < 1:
                raise InputError(f"{name}={value}: expected a positive integer")
        if int(batch_size) < 2:
            raise InputError(f"batch_size={batch_size}: expected at least 2 (batch norm)")
        self.k, self.n_models, self.epochs, self.batch_size = (
            int(k),
            int(n_models),
            int(epochs),
            int(batch_size),
        )
        self.lr, self.min_lr, self.patience, self.tol = (
            float(lr),
            float(min_lr),
            int(patience),
            float(tol),
        )
        self.standardize, self.lam, self.timestep_weight = (
            bool(standardize),
            float(lam),
            float(timestep_weight),
        )
        self.seed, self.device, self.bf16 = int(seed), str(device), bool(bf16)
        self.model_: SelectiveFusion | None = None

    # ------------------------------------------------------------------ training
    def hyperparameters(self) -> dict[str, Any]:
        keys = ("k", "n_models", "epochs", "batch_size", "lr", "min_lr", "patience", "tol")
        keys += ("standardize", "lam", "timestep_weight", "seed", "device", "bf16")
        return {key: getattr(self, key) for key in keys}

    def fit(
        self,
        centre: np.ndarray,
        glob: np.ndarray,
        y: np.ndarray,
        callback: Callback | None = None,
        warm_start: MTMSDClassifier | None = None,
    ) -> MTMSDClassifier:
        return run(self.iter_fit(centre, glob, y, warm_start), callback)

    def iter_fit(
        self,
        centre: np.ndarray,
        glob: np.ndarray,
        y: np.ndarray,
        warm_start: MTMSDClassifier | None = None,
    ) -> Generator[Progress, None, MTMSDClassifier]:
        """Train; yields ``{"stage": "train", "step", "total", "loss", "epoch", "active"}`` per batch.

        ``loss`` is the running mean loss of the current epoch over the members still
        training (``active``). Stopping the generator leaves the classifier unfitted.

        ``warm_start``, a fitted classifier with the same classes, feature shape and ensemble
        size (see :meth:`warm_start_mismatch`), makes this a continuation: its purification,
        channel statistics and weights are the starting point and only the heads train on ``y``.
        That is the interactive "Update" after a few more painted pixels: a few epochs instead
        of a hundred from scratch. A full ``fit`` refits the purification as well.

        On the CPU a full fit trains on one thread: its matrices are small, and a second OpenMP
        thread made each step 8x slower whenever another process held a core (606 against 71 ms
        per step on this project's 2-core machine), for less than 2x gain on an idle one. A warm
        start, a second or less that a user waits for, takes all threads unless the machine is
        busy (``device.cpu_threads``): 0.5 against 0.8 s for an Update on Indian Pines.
        """
        before = torch.get_num_threads()
        if resolve_device(self.device).type == "cpu":
            torch.set_num_threads(1 if warm_start is None else cpu_threads())
        try:
            return (yield from self._iter_fit(centre, glob, y, warm_start))
        finally:
            torch.set_num_threads(before)

    def warm_start_mismatch(
        self,
        y: np.ndarray,
        n_models: int | None = None,
        centre: np.ndarray | None = None,
        glob: np.ndarray | None = None,
    ) -> str | None:
        """Why this fitted classifier cannot be the warm start of a fit on these inputs (None
        when it can): it must know exactly the classes of ``y`` and, where given, have the
        ensemble size and the features' shape."""
        if self.model_ is None:
            return "it is not trained"
        classes = np.unique(np.asarray(y))
        if not np.array_equal(classes, self.classes_):
            return (
                f"the labels hold classes {classes.tolist()}, the classifier knows "
                f"{self.classes_.tolist()}"
            )
        if centre is not None and glob is not None:
            got = (centre.shape[1], centre.shape[2], glob.shape[2])
            want = (self.n_timesteps_, self.n_channels_["centre"], self.n_channels_["glob"])
            if got != want:
                return f"features with (T, D, D) = {got}, the classifier was trained on {want}"
        if n_models is not None and n_models != self.n_models:
            return f"an ensemble of {n_models}, the classifier has {self.n_models}"
        return None

    def _iter_fit(
        self,
        centre: np.ndarray,
        glob: np.ndarray,
        y: np.ndarray,
        warm_start: MTMSDClassifier | None,
    ) -> Generator[Progress, None, MTMSDClassifier]:
        centre, glob = _check_pair(centre, glob)
        classes, y_idx = check_labels(y, len(centre))
        device = resolve_device(self.device)
        gen = torch.Generator().manual_seed(self.seed)
        settings = self.hyperparameters()
        job = iter_start(centre, glob, (classes, y_idx), settings, gen, device, warm_start)
        (model, (idx_c, idx_g), stats, notes), xc, xg = yield from job
        loop = EnsembleTrainLoop(model, xc, xg, y_idx, stats, settings, device, gen)
        yield from loop.run()
        self.model_ = model.cpu()
        self.classes_ = classes
        self.k_ = len(idx_c)
        self.n_timesteps_ = centre.shape[1]
        self.n_channels_ = {"centre": int(centre.shape[2]), "glob": int(glob.shape[2])}
        self.purification_ = {"centre": idx_c, "glob": idx_g}
        self.stats_ = stats
        self.history_ = loop.history(warm_start is not None)
        self.notes_ = notes
        return self

    # ---------------------------------------------------------------- inference
    def predict_proba(
        self, centre: np.ndarray, glob: np.ndarray, batch_size: int = _ROWS
    ) -> np.ndarray:
        """Mean softmax of the ensemble, ``(N, K)`` float32, columns in ``classes_`` order."""
        batches = self._purified_batches(centre, glob, batch_size, self.purified_dtype())
        return self._member_outputs(batches)[0].mean(axis=0)

    def predict(self, centre: np.ndarray, glob: np.ndarray, batch_size: int = _ROWS) -> np.ndarray:
        """Labels ``(N,)`` by majority vote of the members; ties go to the highest mean probability."""
        return self.predict_with_confidence(centre, glob, batch_size)[0]

    def predict_with_confidence(
        self, centre: np.ndarray, glob: np.ndarray, batch_size: int = _ROWS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Voted labels ``(N,)`` and the mean probability of each voted label ``(N,)``, from one
        pass of the ensemble (what a class map and its confidence map need)."""
        batches = self._purified_batches(centre, glob, batch_size, self.purified_dtype())
        return self._vote(self._member_outputs(batches)[0])

    def purify(self, centre: np.ndarray, glob: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The purified, standardised centre and global features ``(N, T, k)`` each, in the
        dtype prediction computes in (bf16 where the device has it natively, else float32).

        A classifier that continues this one (``fit(warm_start=...)``) keeps its purification and
        statistics, so these can be made once and predicted from by every interactive Update
        (:meth:`predict_purified`): reading, gathering and converting them is a fifth of a
        whole-scene prediction.
        """
        self._fitted()
        centre, glob = self._check_features(centre, glob)
        dtype, n = self.purified_dtype(), len(centre)
        out = tuple(torch.empty((n, self.n_timesteps_, self.k_), dtype=dtype) for _ in "xg")
        start = 0
        for xb, gb in self._purified_batches(centre, glob, _ROWS, dtype):
            out[0][start : start + len(xb)], out[1][start : start + len(xb)] = xb, gb
            start += len(xb)
        return out

    def predict_purified(
        self, x: torch.Tensor, g: torch.Tensor, batch_size: int = _ROWS
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_with_confidence` on features made by :meth:`purify` (of this
        classifier or of one with the same purification and statistics)."""
        self._fitted()
        want = (self.n_timesteps_, self.k_)
        if x.shape != g.shape or x.dim() != 3 or tuple(x.shape[1:]) != want:
            raise InputError(
                f"purified features of shapes {tuple(x.shape)} and {tuple(g.shape)}: expected "
                f"(N, {want[0]}, {want[1]}) each, from purify()"
            )
        step = max(1, int(batch_size))
        batches = ((x[s : s + step], g[s : s + step]) for s in range(0, len(x), step))
        return self._vote(self._member_outputs(batches)[0])

    def same_purification(self, other: MTMSDClassifier) -> bool:
        """Whether ``other`` selects and standardises the channels as this one does (features
        from one's :meth:`purify` are then valid for the other)."""
        if self.purification_ is None or other.purification_ is None:
            return False
        if self.purified_dtype() != other.purified_dtype():
            return False
        return all(
            np.array_equal(self.purification_[key], other.purification_[key])
            and all(map(np.array_equal, self.stats_[key], other.stats_[key]))
            for key in ("centre", "glob")
        )

    def timestep_attention(
        self, centre: np.ndarray, glob: np.ndarray, batch_size: int = _ROWS
    ) -> np.ndarray:
        """Mean attention weight of every timestep ``(N, T)`` (over members and channels; rows sum to 1)."""
        batches = self._purified_batches(centre, glob, batch_size, torch.float32)
        return self._member_outputs(batches, attention=True)[1]

    def purified_dtype(self) -> torch.dtype:
        """What prediction computes the attention in: bf16 where the device has it natively."""
        bf16 = self.bf16 and bf16_supported(resolve_device(self.device))
        return torch.bfloat16 if bf16 else torch.float32

    def _check_features(
        self, centre: np.ndarray, glob: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        centre, glob = _check_pair(centre, glob)
        got = (centre.shape[1], centre.shape[2], glob.shape[2])
        want = (self.n_timesteps_, self.n_channels_["centre"], self.n_channels_["glob"])
        if got != want:
            raise InputError(
                f"features with T={got[0]}, D=({got[1]}, {got[2]}) (centre, global): this "
                f"classifier was trained on T={want[0]}, D=({want[1]}, {want[2]})"
            )
        return centre, glob

    def _purified_batches(
        self, centre: np.ndarray, glob: np.ndarray, batch_size: int, dtype: torch.dtype
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Row batches of purified, standardised features, on the CPU, in ``dtype``."""
        self._fitted()
        centre, glob = self._check_features(centre, glob)
        keep = {key: torch.from_numpy(v) for key, v in self.purification_.items()}
        norm = {key: tuple(torch.from_numpy(a) for a in v) for key, v in self.stats_.items()}

        def purified(a: np.ndarray, key: str) -> torch.Tensor:
            # a copy (the rows may be a read-only memmap), then torch gathers the channels: twice
            # as fast as numpy fancy indexing here
            t = torch.from_numpy(np.array(a, order="C")).index_select(2, keep[key])
            return normalise(t.float(), norm[key]).to(dtype)

        step = max(1, int(batch_size))
        for start in range(0, len(centre), step):
            rows = slice(start, start + step)
            yield purified(centre[rows], "centre"), purified(glob[rows], "glob")

    def _member_outputs(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], attention: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-member softmax ``(E, N, K)`` (and with ``attention`` the mean attention over
        timesteps ``(N, T)``) of purified batches."""
        model = self._fitted()
        device = resolve_device(self.device)
        model.to(device).eval()
        probs, attn = [], []
        with torch.inference_mode():
            folded = None if attention else model.folded(self.purified_dtype() == torch.bfloat16)
            for xb, gb in batches:
                xb, gb = xb.to(device), gb.to(device)
                if attention:
                    logits, weights = model(xb, gb, return_attention=True)
                    attn.append(weights.mean(dim=(0, 3)).cpu().numpy())
                else:
                    logits = model.predict_logits(xb, gb, folded)
                probs.append(torch.softmax(logits, dim=-1).cpu().numpy())
        model.cpu()
        k = len(self.classes_)
        member_probs = (
            np.concatenate(probs, axis=1) if probs else np.zeros((self.n_models, 0, k), np.float32)
        )
        timestep = None
        if attention:
            timestep = (
                np.concatenate(attn) if attn else np.zeros((0, self.n_timesteps_), np.float32)
            )
        return member_probs, timestep

    def _vote(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Majority vote of the members' ``(E, N, K)`` probabilities, with its mean probability."""
        mean = probs.mean(axis=0)
        votes = np.zeros(probs.shape[1:], dtype=np.float64)
        for member in probs:
            votes[np.arange(len(member)), member.argmax(axis=1)] += 1.0
        # mean probabilities differ by less than 1, so halved they only break ties
        winner = (votes + 0.5 * mean).argmax(axis=1)
        return self.classes_[winner], mean[np.arange(len(winner)), winner]

    def _fitted(self) -> SelectiveFusion:
        if self.model_ is None:
            raise InputError("this MTMSDClassifier is not trained: call fit() or load() first")
        return self.model_

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write ``path/`` atomically (``classifier_file``): everything but the weights as
        JSON, the weights and channel statistics as safetensors."""
        model = self._fitted()
        record = {
            "hyperparameters": self.hyperparameters(),
            "classes": [int(c) for c in self.classes_],
            "k": self.k_,
            "n_timesteps": self.n_timesteps_,
            "n_channels": self.n_channels_,
            "purification": {key: v.tolist() for key, v in self.purification_.items()},
            "seed": self.seed,
            "history": self.history_,
            "notes": self.notes_,
        }
        tensors = {f"model.{name}": t.contiguous() for name, t in model.state_dict().items()}
        for key, (mean, std) in self.stats_.items():
            tensors[f"stats.{key}.mean"] = torch.from_numpy(mean)
            tensors[f"stats.{key}.std"] = torch.from_numpy(std)
        return classifier_file.write(path, record, tensors)

    @classmethod
    def load(cls, path: str | Path) -> MTMSDClassifier:
        """Read a directory written by :meth:`save`; anything missing, corrupt or inconsistent
        raises ``ModelFileError`` naming the file."""
        config, tensors = classifier_file.read(path)
        try:
            self = cls._from_record(config, tensors)
        except (KeyError, TypeError, ValueError, RuntimeError, InputError) as exc:
            raise ModelFileError(
                f"{path}: classifier files are inconsistent or incomplete ({exc})"
            ) from exc
        verify(path)  # the weights' bytes, which a load that succeeds cannot check
        return self

    @classmethod
    def _from_record(cls, config: dict, tensors: dict[str, torch.Tensor]) -> MTMSDClassifier:
        hp = dict(config["hyperparameters"])
        hp["device"] = "cpu"
        self = cls(**hp)
        self.classes_ = np.asarray(config["classes"], dtype=np.int64)
        self.k_, self.n_timesteps_ = int(config["k"]), int(config["n_timesteps"])
        self.n_channels_ = {key: int(v) for key, v in config["n_channels"].items()}
        self.purification_ = {
            key: np.asarray(config["purification"][key], dtype=np.int64)
            for key in ("centre", "glob")
        }
        self.history_, self.notes_ = config["history"], list(config["notes"])
        self.stats_ = {
            key: (
                tensors.pop(f"stats.{key}.mean").numpy(),
                tensors.pop(f"stats.{key}.std").numpy(),
            )
            for key in ("centre", "glob")
        }
        for key, idx in self.purification_.items():
            d = self.n_channels_[key]
            if len(idx) != self.k_ or idx.min() < 0 or idx.max() >= d:
                raise ValueError(f"{key} purification indices do not fit k={self.k_}, D={d}")
        model = empty(
            lambda: SelectiveFusion(self.k_, self.n_timesteps_, len(self.classes_), self.n_models)
        )
        prefix = "model."
        assign(model, {n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)})
        self.model_ = model.eval()
        return self


def _check_pair(centre: np.ndarray, glob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    centre, glob = np.asarray(centre), np.asarray(glob)
    for name, a in (("centre", centre), ("glob", glob)):
        if a.ndim != 3:
            raise InputError(f"{name} features of shape {a.shape}: expected (N, T, D)")
    if centre.shape[:2] != glob.shape[:2]:
        raise InputError(
            f"centre features {centre.shape} and global features {glob.shape}: expected the "
            "same pixels N and timesteps T"
        )
    return centre, glob
