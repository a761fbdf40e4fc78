"""Features: the patch reference against a direct U-Net call, dense tiling, noise, determinism,
bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_mtmsd import _unet_passes as passes
from napari_mtmsd import features as F
from napari_mtmsd.errors import InputError
from napari_mtmsd.features import FeatureSpec, extract_pixels, feature_map, plan_tiles

FP32 = dict(timesteps=(50, 400, 900), stages=(0, 1, 2), bf16=False)


def test_patch_mode_equals_direct_unet_call(tiny_model, small_cube):
    """One pixel far from the border: its window cut by hand, noised by hand, run by hand."""
    model, cube = tiny_model, small_cube
    spec = FeatureSpec(mode="patch", noise_seed=3, noise_draws=1, **FP32)
    r, c = 20, 17
    centre, glob = extract_pixels(model, cube, np.array([[r, c]]), spec, device="cpu")

    P = model.patch_size
    x = model.prepare(cube)[r - P // 2 : r + P // 2, c - P // 2 : c + P // 2]
    x0 = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    noise = torch.randn((model.n_components, P, P), generator=torch.Generator().manual_seed(3))
    ab = torch.as_tensor(np.asarray(model.schedule.alphas_cumprod), dtype=torch.float64)
    for i, t in enumerate(spec.timesteps):
        xt = ab[t].sqrt().float() * x0 + (1 - ab[t]).sqrt().float() * noise[None]
        with torch.no_grad():
            maps = model.unet.forward_features(xt, torch.tensor([t]), spec.stages)
        up = [torch.nn.functional.interpolate(m, size=(P, P), mode="bilinear") for m in maps]
        want_c = torch.cat([u[0, :, P // 2, P // 2] for u in up]).numpy()
        want_g = torch.cat([u[0].mean((1, 2)) for u in up]).numpy()
        np.testing.assert_allclose(centre[0, i], want_c, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(glob[0, i], want_g, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("mode", ["dense", "patch"])
def test_deterministic(tiny_model, small_cube, mode):
    coords = np.array([[0, 0], [5, 9], [39, 31]])
    spec = FeatureSpec(mode=mode, **FP32)
    a = extract_pixels(tiny_model, small_cube, coords, spec, device="cpu")
    b = extract_pixels(tiny_model, small_cube, coords, spec, device="cpu")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (3, 3, sum(tiny_model.unet.stage_channels(spec.stages)))
    assert a[0].dtype == np.float16 and np.isfinite(a[0]).all() and np.isfinite(a[1]).all()


@pytest.mark.parametrize("mode", ["dense", "patch"])
def test_noise_draws_average_the_draws(tiny_model, small_cube, mode):
    """noise_draws=3 is the mean of the single-draw features of seeds 5, 6, 7 (to fp16)."""
    coords = np.array([[0, 0], [5, 9], [20, 17], [39, 31]])
    spec = FeatureSpec(mode=mode, tile=48, margin=4, noise_seed=5, noise_draws=3, **FP32)
    centre, glob = extract_pixels(tiny_model, small_cube, coords, spec, device="cpu")
    singles = [
        extract_pixels(
            tiny_model, small_cube, coords,
            FeatureSpec(mode=mode, tile=48, margin=4, noise_seed=seed, noise_draws=1, **FP32),
            device="cpu",
        )
        for seed in (5, 6, 7)
    ]  # fmt: skip
    for i, got in enumerate((centre, glob)):
        want = np.mean([s[i].astype(np.float32) for s in singles], axis=0)
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=4e-3, atol=4e-3)
        assert not np.allclose(got, singles[0][i], rtol=1e-2, atol=1e-2)  # draws differ


def test_dense_pixels_do_not_depend_on_which_pixels_are_asked(tiny_model, small_cube):
    """Several tiles: a subset of pixels equals the same pixels of the whole scene."""
    spec = FeatureSpec(tile=48, margin=4, **FP32)
    H, W = small_cube.data.shape[:2]
    assert len(plan_tiles(H, W, tiny_model.patch_size, spec, 2)) > 1
    everything = np.argwhere(np.ones((H, W), bool))
    whole_c, whole_g = extract_pixels(tiny_model, small_cube, everything, spec, device="cpu")
    idx = np.array([0, 7, 200, 641, len(everything) - 1])
    sub_c, sub_g = extract_pixels(
        tiny_model, small_cube, everything[idx][::-1], spec, device="cpu"
    )
    np.testing.assert_array_equal(sub_c[::-1], whole_c[idx])
    np.testing.assert_array_equal(sub_g[::-1], whole_g[idx])


def test_dense_close_to_patch(tiny_model, small_cube):
    """Dense and patch features describe the same pixel: high cosine similarity on average."""
    coords = np.argwhere(np.ones(small_cube.data.shape[:2], bool))[::37]
    d = extract_pixels(tiny_model, small_cube, coords, FeatureSpec(**FP32), device="cpu")
    p = extract_pixels(
        tiny_model, small_cube, coords, FeatureSpec(mode="patch", **FP32), device="cpu"
    )
    for a, b in zip(d, p, strict=True):
        a, b = a.astype(np.float64), b.astype(np.float64)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        assert np.median(cos) > 0.8


def test_noise_field_is_independent_of_tiling():
    whole = F.noise_field(3, -20, -7, 150, 90, seed=5)
    part = F.noise_field(3, 31, 40, 66, 21, seed=5)
    np.testing.assert_array_equal(part, whole[:, 51:117, 47:68])
    assert not np.array_equal(F.noise_field(3, 0, 0, 8, 8, 5), F.noise_field(3, 0, 0, 8, 8, 6))


@pytest.mark.parametrize("hs,ws", [(60, 60), (30, 15), (15, 60)])
def test_separable_operators_equal_upsample_then_window_mean(hs, ws):
    # centre = the bilinearly upsampled map at the served pixels; global = the mean of the
    # upsampled map over each served pixel's window (window // 2 before it, as in patch mode)
    nn = torch.nn.functional
    m = torch.randn(2, 3, hs, ws)
    H, W, P = 60, 60, 8
    rows, cols = slice(10, 45), slice(4, 56)
    up = nn.interpolate(m, size=(H, W), mode="bilinear", align_corners=False)
    pooled = nn.avg_pool2d(up, P, stride=1)  # pooled[i] = mean of up[i : i + P]
    want_c = up[:, :, rows, cols].permute(2, 3, 0, 1)
    want_g = pooled[:, :, rows.start - P // 2 : rows.stop - P // 2,
                    cols.start - P // 2 : cols.stop - P // 2].permute(2, 3, 0, 1)  # fmt: skip
    rc, rg = passes.axis_operators(hs, H, rows, P)
    cc, cg = passes.axis_operators(ws, W, cols, P)
    torch.testing.assert_close(passes.separable(m, rc, cc), want_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(passes.separable(m, rg, cg), want_g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("H,W,tile", [(145, 145, 256), (145, 145, 96), (31, 200, 64), (1, 1, 64)])
def test_tiles_serve_every_pixel_once_with_context(H, W, tile):
    window, spec = 32, FeatureSpec(tile=tile, margin=8)
    served = np.zeros((H, W), int)
    for t in plan_tiles(H, W, window, spec, multiple=4):
        assert t.h % 4 == 0 and t.w % 4 == 0
        served[slice(*t.rows), slice(*t.cols)] += 1
        # every served pixel has its window plus the margin inside the tile
        assert t.rows[0] - window // 2 - spec.margin >= t.r0
        assert t.rows[1] + window // 2 + spec.margin <= t.r0 + t.h
        assert t.cols[0] - window // 2 - spec.margin >= t.c0
        assert t.cols[1] + window // 2 + spec.margin <= t.c0 + t.w
    np.testing.assert_array_equal(served, 1)


def test_reflect_index():
    np.testing.assert_array_equal(
        F._reflect(np.arange(-3, 8), 4), [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]
    )
    np.testing.assert_array_equal(F._reflect(np.arange(-2, 3), 1), 0)


def test_feature_map_matches_pixel_features(tiny_model, small_cube):
    spec = FeatureSpec(**FP32)
    fmap = feature_map(tiny_model, small_cube, 400, 1, spec, device="cpu")
    H, W = small_cube.data.shape[:2]
    assert fmap.shape == (H, W, tiny_model.unet.stage_channels([1])[0])
    centre, _ = extract_pixels(
        tiny_model,
        small_cube,
        np.array([[3, 4]]),
        FeatureSpec(timesteps=(400,), stages=(1,), bf16=False),
        device="cpu",
    )
    np.testing.assert_allclose(fmap[3, 4], centre[0, 0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timesteps": (50, 5000)}, "outside the schedule"),
        ({"stages": (0, 99)}, "do not exist"),
        ({"noise_draws": 0}, "noise_draws must be at least 1"),
    ],
)
def test_bad_specs(tiny_model, small_cube, kwargs, match):
    with pytest.raises(InputError, match=match):
        extract_pixels(tiny_model, small_cube, np.array([[0, 0]]), FeatureSpec(**kwargs))


def test_bad_mode_and_coords(tiny_model, small_cube):
    with pytest.raises(InputError, match="dense"):
        FeatureSpec(mode="sparse")
    with pytest.raises(InputError, match="outside"):
        extract_pixels(tiny_model, small_cube, np.array([[0, 999]]), FeatureSpec(**FP32))
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        extract_pixels(tiny_model, small_cube, np.array([1, 2, 3]), FeatureSpec(**FP32))


def test_peak_memory_stays_bounded_on_a_large_scene(tiny_model, tmp_path):
    """1000 x 1000 scene streamed through the tiny U-Net into the feature cache, then read back
    whole by ``chunks``, in a fresh process: its peak RSS stays far below what materialising the
    (H, W, T, D) features would take (building is bounded by the tile, reading by the band)."""
    model_dir = tmp_path / "model"
    tiny_model.save(model_dir)
    script = textwrap.dedent(
        f"""
        import json, resource, numpy as np
        from napari_mtmsd import cache
        from napari_mtmsd.features import FeatureSpec
        from napari_mtmsd.io import Cube
        from napari_mtmsd.model import DiffusionModel
        from napari_mtmsd._progress import run
        model = DiffusionModel.load({str(model_dir)!r})
        rng = np.random.default_rng(0)
        data = np.lib.format.open_memmap({str(tmp_path / "cube.npy")!r}, "w+", np.float32,
                                         (1000, 1000, {tiny_model.n_bands}))
        for r in range(0, 1000, 100):
            data[r:r + 100] = rng.random((100, 1000, data.shape[2]), np.float32)
        cube = Cube(data=data, wavelengths=None, wavelength_units=None, ignore_value=None,
                    name="big", metadata={{}})
        spec = FeatureSpec(timesteps=(100, 500, 900), stages=(0, 1, 2), tile=256)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        job = cache.iter_build(model, cube, spec, {str(tmp_path / "cache")!r}, "cpu", 256)
        store = run(job)
        n = [0]
        for idx, c, g in store.chunks(4096):
            n[0] += len(c)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        d = sum(model.unet.stage_channels(spec.stages))
        print(json.dumps({{"pixels": n[0], "base": base, "peak": peak,
                           "full_mb": 1e6 * 3 * d * 2 * 2 / 2**20}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["pixels"] == 1_000_000
    grown = res["peak"] - res["base"]
    assert grown < 600, res
    assert grown < res["full_mb"], res


def test_spec_files_from_before_noise_draws_mean_one_draw():
    old = {k: v for k, v in FeatureSpec().to_dict().items() if k != "noise_draws"}
    assert FeatureSpec.from_dict(old).noise_draws == 1
    assert FeatureSpec.from_dict(FeatureSpec().to_dict()) == FeatureSpec()
