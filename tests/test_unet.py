"""The U-Net: paper preset size and decoder shapes, any tile size, features, bf16/channels_last."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_mtmsd.unet import PRESETS, UNet, UNetConfig


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    return UNet(PRESETS["paper"]).eval()


def test_paper_preset_parameter_count(paper):
    assert paper.config.in_channels == 25
    assert paper.n_parameters == pytest.approx(26.5e6, rel=0.005)


def test_paper_decoder_block_shapes(paper):
    x = torch.randn(1, 25, 48, 48)
    with torch.no_grad():
        feats = paper.forward_features(x, torch.tensor([100]), range(9))
        out = paper(x, torch.tensor([100]))
    shapes = [tuple(f.shape[1:]) for f in feats]
    assert shapes[:3] == [(256, 12, 12), (256, 12, 12), (256, 24, 24)]
    assert shapes[3:6] == [(256, 24, 24), (256, 24, 24), (256, 48, 48)]
    assert shapes[6:] == [(128, 48, 48)] * 3
    assert paper.stage_channels([0, 1, 2, 3, 5]) == [256] * 5
    assert out.shape == (1, 50, 48, 48)  # learned variance doubles the output


def test_cpu_preset_keeps_decoder_indices():
    net = UNet(PRESETS["cpu"])
    assert len(net.output_blocks) == 9
    assert net.stage_channels(range(9)) == [64] * 6 + [32] * 3


def test_forward_features_stops_early_and_matches_forward():
    torch.manual_seed(0)
    net = UNet(PRESETS["tiny"]).eval()
    for p in net.parameters():  # zero-initialised layers would hide mistakes
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([5, 700])
    calls = []
    hooks = [
        b.register_forward_hook(lambda *a, i=i: calls.append(i))
        for i, b in enumerate(net.output_blocks)
    ]
    with torch.no_grad():
        a, b = net.forward_features(x, t, [1, 0])
    assert calls == [0, 1]
    for h in hooks:
        h.remove()
    with torch.no_grad():
        full = net.forward_features(x, t, range(len(net.output_blocks)))
    torch.testing.assert_close(a, full[1])
    torch.testing.assert_close(b, full[0])


def test_any_divisible_size_channels_last_and_bf16():
    net = UNet(PRESETS["tiny"]).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 4, 40, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, torch.tensor([10]))
        (f,) = net.forward_features(x, torch.tensor([10]), [0])
    assert y.shape == (1, 4, 40, 24) and f.shape[-2:] == (10, 6)  # block 0 is at 1/4
    assert torch.isfinite(y.float()).all()


def test_bad_inputs():
    net = UNet(PRESETS["tiny"])
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 4, 18, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\(N, 4, h, w\)"):
        net(torch.randn(1, 3, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"decoder blocks 0\.\.8"):
        net.forward_features(torch.randn(1, 4, 16, 16), torch.tensor([1]), [9])


def test_config_round_trip():
    cfg = dataclasses.replace(PRESETS["paper"], in_channels=13)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown U-Net settings"):
        UNetConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})
