"""Selective timestep fusion + MLP head (method.md section 5), a whole ensemble in one module.

Every parameter carries a leading *member* axis ``E``: the ``n_members`` independently
initialised models of the ensemble train side by side in the same batched matrix products
instead of five Python loops of small ones, which is what makes the ensemble cheap on a 2-core
CPU. The per-timestep linears likewise are one ``(T, in, out)`` weight each, applied by einsum.
Adam is element-wise and every member has its own batch statistics, so training the stack is
the same as training the members one after another.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Linear(nn.Module):
    """``E`` independent linears (optionally one per timestep: ``T`` more of them)."""

    def __init__(self, n_members: int, d_in: int, d_out: int, n_steps: int | None = None):
        super().__init__()
        lead = (n_members,) if n_steps is None else (n_members, n_steps)
        self.weight = nn.Parameter(torch.empty(*lead, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(*lead, d_out))
        self.d_in = d_in

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
        bound = 1.0 / math.sqrt(self.d_in)
        for p in (self.weight, self.bias):
            with torch.no_grad():
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 3:  # x (E, B, in)
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)
        # per timestep: x (E, B, T, in) -> (E, B, T, out)
        return torch.einsum("ebti,etio->ebto", x, self.weight) + self.bias.unsqueeze(1)

    def shared_input(self, x: torch.Tensor) -> torch.Tensor:
        """All ``T`` per-timestep linears applied to one ``x (E, B, in)``: one matmul, ``(E, B, T, out)``."""
        e, t, d_in, d_out = self.weight.shape
        w = self.weight.permute(0, 2, 1, 3).reshape(e, d_in, t * d_out)
        return torch.bmm(x, w).view(e, -1, t, d_out) + self.bias.unsqueeze(1)


class _BatchNorm(nn.Module):
    """BatchNorm1d per member: statistics over each member's own batch."""

    def __init__(self, n_members: int, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_members, channels))
        self.bias = nn.Parameter(torch.zeros(n_members, channels))
        self.register_buffer("running_mean", torch.zeros(n_members, channels))
        self.register_buffer("running_var", torch.ones(n_members, channels))
        self.momentum, self.eps = momentum, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (E, B, C)
        x = x.float()  # statistics in fp32, also under bf16 autocast
        if self.training:
            mean = x.mean(dim=1, keepdim=True)
            var = x.var(dim=1, unbiased=False, keepdim=True)
            with torch.no_grad():  # running statistics as torch.nn.BatchNorm1d keeps them
                n = x.shape[1]
                unbiased = var.squeeze(1) * (n / max(n - 1, 1))
                self.running_mean.lerp_(mean.squeeze(1), self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean.unsqueeze(1), self.running_var.unsqueeze(1)
        scale = self.weight.unsqueeze(1) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.unsqueeze(1)


class SelectiveFusion(nn.Module):
    """Attention over timesteps per channel, then an MLP head; ``n_members`` models at once.

    ``forward(x, g)`` takes the purified centre ``x`` and global ``g`` features, each
    ``(B, T, k)`` (shared by all members) or ``(E, B, T, k)`` (one batch per member), and
    returns logits ``(E, B, n_classes)``; with ``return_attention=True`` also the softmax
    weights over timesteps ``(E, B, T, k)`` (they sum to 1 over ``T`` for every channel).
    """

    def __init__(
        self,
        k: int,
        n_timesteps: int,
        n_classes: int,
        n_members: int = 1,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if k < 2:
            raise ValueError(f"k={k}: the fusion needs at least 2 channels")
        h = k // 2
        self.k, self.n_timesteps, self.n_classes, self.n_members = (
            k,
            n_timesteps,
            n_classes,
            n_members,
        )
        e = n_members
        self.squeeze1 = _Linear(e, k, h)
        self.squeeze_bn = _BatchNorm(e, h)
        self.squeeze2 = _Linear(e, h, h)
        self.step_z = _Linear(e, h, h, n_steps=n_timesteps)
        self.step_a_z = _Linear(
            e, h, k, n_steps=n_timesteps
        )  # the z-part of Linear_i(k/2 + k -> k)
        self.step_a_g = nn.Parameter(torch.empty(e, n_timesteps, k, k))  # its g-part (no bias)
        self.head1 = _Linear(e, k, 128)
        self.head_bn1 = _BatchNorm(e, 128)
        self.head2 = _Linear(e, 128, 32)
        self.head_bn2 = _BatchNorm(e, 32)
        self.head3 = _Linear(e, 32, n_classes)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for lin in (self.squeeze1, self.squeeze2, self.step_z, self.head1, self.head2, self.head3):
            lin.reset_parameters(generator)
        # Linear_i(k/2 + k -> k) split in two: both parts share its fan-in bound.
        bound = 1.0 / math.sqrt(self.k // 2 + self.k)
        with torch.no_grad():
            for p in (self.step_a_z.weight, self.step_a_z.bias, self.step_a_g):
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)

    def forward(
        self, x: torch.Tensor, g: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, g = self._members(x, "x"), self._members(g, "g")
        u = x.sum(dim=2)  # (E, B, k)
        z = self._squeeze(u)  # (E, B, k/2)
        zt = self.step_z.shared_input(z)  # (E, B, T, k/2)
        a = self.step_a_z(zt) + torch.einsum("ebti,etio->ebto", g, self.step_a_g)
        attention = torch.softmax(a, dim=2)  # over timesteps, per channel
        v = (attention * x).sum(dim=2)  # (E, B, k)
        logits = self._head(v)
        return (logits, attention) if return_attention else logits

    @torch.no_grad()
    def folded(self, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention's weights rearranged for :meth:`predict_logits` (compute once per model).

        ``step_z`` and ``step_a_z`` have no nonlinearity between them, so they fold into one
        ``(k/2 -> k)`` linear per timestep: a third fewer operations in the attention. The ``g``
        weights of all members are laid side by side, so the shared ``g`` meets them in one
        matmul per timestep. With ``bf16`` the two matmul weights are bf16 (see
        :meth:`predict_logits`).
        """
        e, n_t, k = self.n_members, self.n_timesteps, self.k
        w_z, b_z = self.step_z.weight, self.step_z.bias  # (E, T, h, h), (E, T, h)
        w_a, b_a = self.step_a_z.weight, self.step_a_z.bias  # (E, T, h, k), (E, T, k)
        w_fold = (w_z @ w_a).permute(0, 2, 1, 3).reshape(e, k // 2, n_t * k).contiguous()
        b_fold = ((b_z.unsqueeze(2) @ w_a).squeeze(2) + b_a).unsqueeze(1)  # (E, 1, T, k)
        w_g = self.step_a_g.permute(1, 2, 0, 3).reshape(n_t, k, e * k).contiguous()
        if bf16:
            w_fold, b_fold, w_g = (t.to(torch.bfloat16) for t in (w_fold, b_fold, w_g))
        return w_fold, b_fold, w_g

    @torch.no_grad()
    def predict_logits(
        self,
        x: torch.Tensor,
        g: torch.Tensor,
        folded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``forward`` in eval mode for inputs ``(B, T, k)`` shared by all members: logits
        ``(E, B, n_classes)``, equal to ``forward`` up to rounding and 1.5x as fast (whole-scene
        prediction is what an interactive update waits for). ``folded`` is :meth:`folded`,
        passed in when predicting many batches. If its weights are bf16, the attention over
        timesteps (its two matmuls, two thirds of the arithmetic, and the softmax-weighted sum)
        runs in bf16 with float32 accumulation: 2x faster on a CPU with native bf16. ``x`` and
        ``g`` may come in that dtype already (``MTMSDClassifier.purify``).
        """
        if self.training:
            raise RuntimeError("predict_logits is for eval mode: call .eval() first")
        for name, t in (("x", x), ("g", g)):
            if t.dim() != 3 or tuple(t.shape[1:]) != (self.n_timesteps, self.k):
                raise ValueError(
                    f"{name} of shape {tuple(t.shape)}: expected (B, {self.n_timesteps}, {self.k})"
                )
        w_fold, b_fold, w_g = self.folded() if folded is None else folded
        e, n_t, k, b = self.n_members, self.n_timesteps, self.k, x.shape[0]
        u = x.sum(dim=1, dtype=torch.float32).unsqueeze(0).expand(e, -1, -1)  # (E, B, k), a view
        z = self._squeeze(u)  # (E, B, k/2)
        dtype = w_g.dtype  # float32, or bf16
        a = torch.bmm(g.transpose(0, 1).to(dtype), w_g).view(n_t, b, e, k)  # (T, B, E, k)
        a += torch.bmm(z.to(dtype), w_fold).view(e, b, n_t, k).add_(b_fold).permute(2, 1, 0, 3)
        a = torch.softmax(a, dim=0)  # attention over timesteps
        a *= x.transpose(0, 1).unsqueeze(2).to(dtype)  # in place: one pass less over (T, B, E, k)
        v = a.sum(dim=0).float().transpose(0, 1)  # (E, B, k); bf16 sums accumulate in float32
        return self._head(v)

    def _squeeze(self, u: torch.Tensor) -> torch.Tensor:
        """The squeeze of the summed centre features ``(E, B, k)`` -> ``z (E, B, k/2)``."""
        return self.squeeze2(self.squeeze_bn(F.relu(self.squeeze1(u))))

    def _head(self, v: torch.Tensor) -> torch.Tensor:
        """The MLP head on the fused vector ``(E, B, k)`` -> logits ``(E, B, n_classes)``."""
        h = self.head_bn1(F.relu(self.head1(v)))
        h = self.head_bn2(F.relu(self.head2(h)))
        return self.head3(h)

    def _members(self, t: torch.Tensor, name: str) -> torch.Tensor:
        if t.dim() == 3:
            t = t.unsqueeze(0).expand(self.n_members, -1, -1, -1)
        expected = (self.n_members, self.n_timesteps, self.k)
        if t.dim() != 4 or (t.shape[0], t.shape[2], t.shape[3]) != expected:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)}: expected (B, {self.n_timesteps}, {self.k})"
                f" or ({self.n_members}, B, {self.n_timesteps}, {self.k})"
            )
        return t
