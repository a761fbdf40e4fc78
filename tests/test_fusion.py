import pytest
import torch

from napari_mtmsd.fusion import SelectiveFusion


def _inputs(e=None, b=6, t=5, k=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (b, t, k) if e is None else (e, b, t, k)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def test_shapes_and_attention_sums_to_one_over_timesteps():
    model = SelectiveFusion(k=8, n_timesteps=5, n_classes=3, n_members=2)
    x, g = _inputs()
    logits = model(x, g)
    assert logits.shape == (2, 6, 3)
    logits2, attention = model(x, g, return_attention=True)
    assert torch.equal(logits, logits2)
    assert attention.shape == (2, 6, 5, 8)
    assert torch.all(attention >= 0)
    torch.testing.assert_close(attention.sum(dim=2), torch.ones(2, 6, 8))


def test_fused_vector_is_attention_weighted_sum():
    model = SelectiveFusion(k=8, n_timesteps=5, n_classes=3).eval()
    x, g = _inputs()
    captured = {}
    model.head1.register_forward_hook(lambda mod, inp, out: captured.update(v=inp[0]))
    _, attention = model(x, g, return_attention=True)
    expected = (attention[0] * x).sum(dim=1)
    torch.testing.assert_close(captured["v"][0], expected)


def test_members_are_independent():
    # Changing one member's batch must not change another member's output (no shared state)
    model = SelectiveFusion(k=8, n_timesteps=5, n_classes=3, n_members=3)
    x, g = _inputs(e=3)
    out = model(x, g)
    x2 = x.clone()
    x2[1] += 5.0
    out2 = model(x2, g)
    torch.testing.assert_close(out[0], out2[0])
    torch.testing.assert_close(out[2], out2[2])
    assert not torch.allclose(out[1], out2[1])


def test_member_matches_single_model_with_same_weights():
    stacked = SelectiveFusion(k=8, n_timesteps=5, n_classes=3, n_members=2)
    single = SelectiveFusion(k=8, n_timesteps=5, n_classes=3, n_members=1)
    single.load_state_dict({n: t[1:2].clone() for n, t in stacked.state_dict().items()})
    x, g = _inputs()
    torch.testing.assert_close(stacked(x, g)[1], single(x, g)[0])


def test_gradient_flows_and_seeded_init():
    a = SelectiveFusion(8, 5, 3, 2, generator=torch.Generator().manual_seed(1))
    b = SelectiveFusion(8, 5, 3, 2, generator=torch.Generator().manual_seed(1))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # the two members are initialised differently
    assert not torch.equal(a.step_a_g[0], a.step_a_g[1])
    x, g = _inputs()
    a(x, g).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters())


def test_bad_shapes():
    model = SelectiveFusion(k=8, n_timesteps=5, n_classes=3)
    x, g = _inputs(k=7)
    with pytest.raises(ValueError, match="expected"):
        model(x, g)


def test_predict_logits_equals_forward_in_eval_mode():
    # The fast inference path (folded step linears, one g-matmul per timestep) is the same
    # function as forward: checked with non-trivial batch-norm statistics and biases.
    gen = torch.Generator().manual_seed(3)
    model = SelectiveFusion(k=8, n_timesteps=5, n_classes=3, n_members=3, generator=gen)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            buf.copy_(torch.rand(buf.shape, generator=gen) + (0.5 if "var" in name else -0.5))
    model.eval()
    x, g = _inputs(b=7)
    expected = model(x, g)
    torch.testing.assert_close(model.predict_logits(x, g), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.predict_logits(x, g, model.folded()), expected)
    with pytest.raises(ValueError, match="expected"):
        model.predict_logits(x[:, :4], g[:, :4])
    with pytest.raises(RuntimeError, match="eval"):
        model.train().predict_logits(x, g)


def test_predict_logits_in_bf16_is_close_to_float32():
    model = SelectiveFusion(k=8, n_timesteps=5, n_classes=3, n_members=2).eval()
    x, g = _inputs(b=7)
    exact = model.predict_logits(x, g)
    fast = model.predict_logits(x, g, model.folded(bf16=True))
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05)
