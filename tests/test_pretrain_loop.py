"""The pretraining loop: patches (the whole padded input or windows read per batch, memory
bounded by a budget), micro-batches with accumulated gradients, a stop within a step."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import napari_mtmsd._patches as patches_mod
from napari_mtmsd._patches import PatchSampler, dihedral_indices, reflect
from napari_mtmsd._progress import run
from napari_mtmsd.io import Cube
from napari_mtmsd.model import DiffusionModel
from napari_mtmsd.preprocess import Preprocessor


def test_patch_augmentations_are_the_eight_dihedral_transforms():
    grid = np.arange(100).reshape(10, 10)
    crop = grid[2:6, 3:7]
    expected = [np.rot90(f, k) for f in (crop, crop.T) for k in range(4)]
    got = []
    for aug in range(8):
        r, c = dihedral_indices(np.array([2]), np.array([3]), np.array([aug]), 4)
        got.append(grid[r[0], c[0]])
    for e in expected:
        assert sum(np.array_equal(e, g) for g in got) == 1


@pytest.fixture(scope="module")
def toy():
    """A cube with structure, an invalid pixel at an edge and its fitted preprocessing."""
    rng = np.random.default_rng(1)
    data = rng.normal(size=(21, 18, 9)).astype(np.float32).cumsum(axis=0)
    data[0, 5, :] = np.nan
    cube = Cube(data=data, name="toy")
    return cube, Preprocessor.fit(cube, 4)


def test_windows_read_from_the_cube_equal_the_whole_padded_input(toy):
    """The two ways to cut patches give the same patches for the same draws, at the edges
    (reflected), under every flip / rotation and with the invalid pixel at 0."""
    cube, pre = toy
    whole = PatchSampler(cube, pre, 16, torch.device("cpu"))
    windows = PatchSampler(cube, pre, 16, torch.device("cpu"), budget=0)
    assert (whole.mode, windows.mode) == ("whole", "windows")
    rows, cols = np.array([0, 20, 10, 0, 3]), np.array([0, 17, 9, 5, 16])
    aug = np.array([5, 3, 6, 0, 7])
    a, b = whole.patches(rows, cols, aug), windows.patches(rows, cols, aug)
    assert a.shape == b.shape == (5, 4, 16, 16)
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (b[3, :, 8, 8] == 0).all()  # the NaN pixel, centre of the patch at (0, 5)


def test_reflection_matches_numpy_pad():
    for n in (1, 2, 5):
        idx = np.arange(-13, n + 13)
        want = np.pad(np.arange(n), 13, mode="reflect") if n > 1 else np.zeros(n + 26, int)
        np.testing.assert_array_equal(reflect(idx, n), want)


def _tiny(cube, steps, **kwargs):
    from napari_mtmsd.pretrain import iter_pretrain

    records = []
    gen = iter_pretrain(cube, preset="tiny", steps=steps, device="cpu", seed=5,
                        precision="fp32", num_threads=1, **kwargs)  # fmt: skip
    return run(gen, records.append), records


def test_micro_batches_add_up_to_the_whole_step(toy):
    """Gradients accumulated over micro-batches of 3, 3 and 2 patches: the same steps to float
    rounding, a record after each micro-batch; the same split again: the same model bitwise."""
    cube, _ = toy
    whole, plain = _tiny(cube, 3)
    split, records = _tiny(cube, 3, micro_batch=3)
    again, _ = _tiny(cube, 3, micro_batch=3)
    micro = [r for r in records if "micro" in r]
    assert [r["micro"] for r in micro] == [1, 2, 3] * 3 and {r["micros"] for r in micro} == {3}
    assert not any("micro" in r for r in plain)
    assert [r["loss"] for r in records if "loss" in r] == pytest.approx(
        [r["loss"] for r in plain if "loss" in r], rel=1e-5
    )
    sw, ss = whole.unet.state_dict(), split.unet.state_dict()
    for k in sw:
        torch.testing.assert_close(ss[k], sw[k], rtol=1e-4, atol=1e-6)
    assert split.fingerprint() == again.fingerprint() != whole.fingerprint()


def test_windows_path_same_seed_same_model(toy, monkeypatch):
    """Patches read from the cube per batch: a seed still gives one model, the one the whole
    path gives up to the float rounding of the projection."""
    cube, _ = toy
    whole, _ = _tiny(cube, 3)
    monkeypatch.setattr(patches_mod, "PATCH_BUDGET_BYTES", 0)
    a, _ = _tiny(cube, 3)
    b, _ = _tiny(cube, 3)
    assert a.fingerprint() == b.fingerprint()
    sa, sw = a.unet.state_dict(), whole.unet.state_dict()
    for k in sw:
        torch.testing.assert_close(sa[k], sw[k], rtol=1e-3, atol=1e-5)


def test_a_stop_within_a_step_resumes_as_if_never_stopped(toy, tmp_path):
    """Closed after a micro-batch of step 2: the checkpoint is step 1's, with the random state
    from before step 2's draws, so the resumed run equals the uninterrupted one."""
    from napari_mtmsd.pretrain import iter_pretrain

    cube, _ = toy
    kwargs = dict(preset="tiny", steps=3, device="cpu", seed=5, precision="fp32",
                  num_threads=1, micro_batch=3)  # fmt: skip
    gen = iter_pretrain(cube, out_dir=tmp_path / "m", **kwargs)
    for record in gen:
        if record.get("step") == 1 and record.get("micro") == 2:
            break
    gen.close()
    assert DiffusionModel.load(tmp_path / "m").config["step"] == 1
    resumed = run(iter_pretrain(cube, out_dir=tmp_path / "m", resume=True, **kwargs))
    straight, _ = _tiny(cube, 3, micro_batch=3)
    assert resumed.fingerprint() == straight.fingerprint()


def test_pretraining_memory_is_bounded_by_tiles_not_by_the_scene(tmp_path, monkeypatch):
    """A memory-mapped 512 x 512 x 32 float32 cube (32 MB) and a 1 MB budget: hashing, the PCA
    fit (a subsample read in chunks) and patches read per batch peak within 1.5 MB of numpy
    memory of the same run on a 64 x 64 crop (the network's own objects are the rest); the
    whole padded input kept in memory (the small-scene path) costs 5 MB more."""
    import napari_mtmsd.io._types as types
    import napari_mtmsd.preprocess as prep

    rng = np.random.default_rng(0)
    data = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float32, (512, 512, 32))
    for r0 in range(0, 512, 64):
        data[r0 : r0 + 64] = rng.normal(size=(64, 512, 32))
    data.flush()
    np.save(tmp_path / "crop.npy", data[:64, :64])
    for mod, name in ((types, "CHUNK_BYTES"), (types, "HASH_BYTES"), (prep, "CHUNK_BYTES")):
        monkeypatch.setattr(mod, name, 1 << 20)
    _tiny(Cube(data=np.asarray(data[:20, :20]), name="warm-up"), 1)  # imports: not the data's

    def peak(name: str, budget: int) -> float:
        monkeypatch.setattr(patches_mod, "PATCH_BUDGET_BYTES", budget)
        cube = Cube(data=np.load(tmp_path / name, mmap_mode="r"), name=name)
        tracemalloc.start()
        try:
            _tiny(cube, 2, max_pixels=2000)
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()

    crop, bounded, whole = (
        peak("crop.npy", 1 << 20),
        peak("big.npy", 1 << 20),
        peak("big.npy", 1 << 30),
    )
    assert bounded - crop < 1.5 and whole - crop > 5, (crop, bounded, whole)
