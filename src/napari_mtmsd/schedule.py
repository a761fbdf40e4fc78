"""DDPM noise schedules (cosine of improved DDPM, linear of Ho et al.), forward noising, losses.

The schedule is kept in float64 numpy arrays (exact, device-free) and gathered per batch onto
the device of the input, so one schedule serves CPU and CUDA tensors alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCHEDULES = ("cosine", "linear")


def _betas(kind: str, T: int) -> np.ndarray:
    if kind == "cosine":
        # alpha_bar(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2, s = 0.008 (Nichol & Dhariwal 2021)
        def alpha_bar(t: np.ndarray) -> np.ndarray:
            return np.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = np.arange(T, dtype=np.float64)
        betas = 1.0 - alpha_bar(steps + 1) / alpha_bar(steps)
        return np.minimum(betas, 0.999)
    if kind == "linear":
        # Ho et al. 2020, scaled so that any T spans the same total noise as T = 1000
        scale = 1000.0 / T
        return np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    raise ValueError(f"unknown noise schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")


def _gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] as a float32 tensor shaped (N, 1, 1, ...) on ``like``'s device."""
    out = torch.as_tensor(values, dtype=torch.float64, device=t.device)[t.long()]
    return out.to(device=like.device, dtype=torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


class NoiseSchedule:
    """Betas and derived quantities for ``T`` diffusion steps."""

    def __init__(self, kind: str = "cosine", T: int = 1000):
        if int(T) < 2:
            raise ValueError(f"the number of diffusion steps T must be at least 2, got {T}")
        self.kind = kind
        self.T = int(T)
        self.betas = _betas(kind, self.T)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        # posterior q(x_{t-1} | x_t, x_0), as in improved DDPM
        self.posterior_variance = (
            self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = (
            self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev)
            * np.sqrt(1.0 - self.betas)
            / (1.0 - self.alphas_cumprod)
        )

    def to_dict(self) -> dict:
        return {"kind": self.kind, "T": self.T}

    @classmethod
    def from_dict(cls, d: dict) -> NoiseSchedule:
        return cls(kind=d["kind"], T=d["T"])

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        a = _gather(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def loss(
        self,
        model_out: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Epsilon-MSE; with a learned variance (2C outputs) the hybrid loss of improved DDPM:
        MSE + the variational bound term, whose gradient reaches only the variance (the mean is
        detached). The data are continuous, so the t = 0 term is a Gaussian negative
        log-likelihood rather than the reference's discretised one for 8-bit images."""
        model_out = model_out.float()
        c = x0.shape[1]
        eps = model_out[:, :c]
        mse = ((eps - noise) ** 2).mean()
        if model_out.shape[1] == c:
            return mse
        if model_out.shape[1] != 2 * c:
            raise ValueError(
                f"model output has {model_out.shape[1]} channels, expected {c} or {2 * c}"
            )
        frac = (model_out[:, c:] + 1) / 2
        min_log = _gather(self.posterior_log_variance_clipped, t, x0)
        max_log = _gather(np.log(self.betas), t, x0)
        log_var = frac * max_log + (1 - frac) * min_log
        a = _gather(self.alphas_cumprod, t, x0)
        x0_pred = (x_t - (1 - a).sqrt() * eps.detach()) / a.sqrt()
        c1 = _gather(self.posterior_mean_coef1, t, x0)
        c2 = _gather(self.posterior_mean_coef2, t, x0)
        mean_pred = c1 * x0_pred + c2 * x_t
        mean_true = c1 * x0 + c2 * x_t
        kl = _normal_kl(mean_true, min_log, mean_pred, log_var).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = (
            0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean_pred) ** 2 * torch.exp(-log_var))
        ).mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl) * (self.T / 1000.0)
        return mse + vb.mean()
