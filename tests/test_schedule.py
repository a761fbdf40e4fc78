"""Noise schedules, q_sample and the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_mtmsd.schedule import NoiseSchedule


def test_cosine_matches_the_formula():
    s = NoiseSchedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.betas.shape == (1000,)
    assert s.betas.max() == pytest.approx(0.999)  # clipped at the end
    assert s.alphas_cumprod[10] == pytest.approx(f(11) / f(0), rel=1e-9)
    assert np.all(np.diff(s.alphas_cumprod) < 0)


def test_linear_schedule():
    s = NoiseSchedule("linear", 1000)
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)


def test_bad_schedule():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        NoiseSchedule("quadratic")


def test_q_sample():
    s = NoiseSchedule()
    x0 = torch.ones(3, 2, 4, 4)
    noise = torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    xt = s.q_sample(x0, t, noise)
    a = torch.tensor(s.alphas_cumprod[[0, 500, 999]], dtype=torch.float32)[:, None, None, None]
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    assert xt.dtype == torch.float32


def test_losses():
    s = NoiseSchedule()
    x0 = torch.randn(4, 2, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 300, 999])
    xt = s.q_sample(x0, t, noise)
    assert s.loss(noise.clone(), x0, xt, t, noise).item() == 0.0
    out = torch.cat([noise, torch.zeros_like(noise)], dim=1).requires_grad_()
    hybrid = s.loss(out, x0, xt, t, noise)
    assert torch.isfinite(hybrid)
    t_pos = torch.tensor([1, 2, 300, 999])  # KL terms only (t = 0 is a continuous NLL, any sign)
    assert s.loss(out, x0, s.q_sample(x0, t_pos, noise), t_pos, noise).item() > 0
    hybrid.backward()
    assert out.grad[:, :2].abs().sum() == 0  # the VLB term trains only the variance
    assert out.grad[:, 2:].abs().sum() > 0
    with pytest.raises(ValueError, match="expected 2 or 4"):
        s.loss(torch.zeros(4, 3, 4, 4), x0, xt, t, noise)
