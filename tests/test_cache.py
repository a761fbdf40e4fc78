"""Feature cache: hit, miss, invalidation, interrupted and damaged writes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_mtmsd import cache
from napari_mtmsd._progress import run
from napari_mtmsd.features import FeatureSpec, extract_pixels

SPEC = FeatureSpec(timesteps=(100, 600), stages=(0, 2), bf16=False)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "cache"


def test_miss_then_hit(tiny_model, small_cube, root):
    assert cache.lookup(tiny_model, small_cube, SPEC, root) is None
    store = run(cache.iter_build(tiny_model, small_cube, SPEC, root, device="cpu"))
    H, W = small_cube.data.shape[:2]
    assert store.centre.shape == (H, W, 2, sum(tiny_model.unet.stage_channels(SPEC.stages)))
    assert cache.disk_usage(root) >= store.nbytes > 0
    records = []
    again = run(cache.iter_build(tiny_model, small_cube, SPEC, root, device="cpu"), records.append)
    assert again.path == store.path and records[-1].get("cached") is True
    # cached pixels equal freshly computed ones, in the order asked
    coords = np.array([[7, 3], [0, 0], [39, 31]])
    want = extract_pixels(tiny_model, small_cube, coords, SPEC, device="cpu")
    got = store.pixels(coords)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_invalidated_by_any_change(tiny_model, small_cube, root):
    key = cache.cache_key(tiny_model, small_cube, SPEC)
    assert key == cache.cache_key(tiny_model, small_cube, SPEC)
    other_spec = dataclasses.replace(SPEC, timesteps=(100, 650))
    data = np.array(small_cube.data)
    data[3, 4, 5] += 1
    other_cube = dataclasses.replace(small_cube, data=data)
    other_seed = dataclasses.replace(SPEC, noise_seed=1)
    keys = {
        cache.cache_key(tiny_model, small_cube, other_spec),
        cache.cache_key(tiny_model, other_cube, SPEC),
        cache.cache_key(tiny_model, small_cube, other_seed),
    }
    assert key not in keys and len(keys) == 3


def test_interrupted_write_leaves_no_valid_entry(tiny_model, small_cube, root):
    gen = cache.iter_build(tiny_model, small_cube, SPEC, root, device="cpu")
    next(gen), next(gen)  # work has started: a temp directory exists
    assert any(p.name.startswith(".tmp-") for p in root.iterdir())
    gen.close()  # what a napari Stop does
    assert cache.lookup(tiny_model, small_cube, SPEC, root) is None
    assert not any(root.iterdir())


def test_damaged_entry_is_a_miss(tiny_model, small_cube, root):
    store = run(cache.iter_build(tiny_model, small_cube, SPEC, root, device="cpu"))
    path = store.path
    del store
    with open(path / "centre.npy", "r+b") as f:  # truncated by a full disk, say
        f.truncate(1000)
    assert cache.lookup(tiny_model, small_cube, SPEC, root) is None
    assert not path.exists()


def test_entry_without_meta_is_a_miss(tiny_model, small_cube, root):
    (root / cache.cache_key(tiny_model, small_cube, SPEC)).mkdir(parents=True)
    assert cache.lookup(tiny_model, small_cube, SPEC, root) is None


def test_entries_and_clear(tiny_model, small_cube, root, capsys):
    from napari_mtmsd.cli import main

    store = run(cache.iter_build(tiny_model, small_cube, SPEC, root, device="cpu"))
    (entry,) = cache.entries(root)
    assert entry["path"] == str(store.path) and entry["shape"] == store.centre.shape
    assert main(["cache", "--cache-dir", str(root)]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert main(["cache", "--cache-dir", str(root), "--clear"]) == 0
    assert cache.disk_usage(root) == 0 and cache.entries(root) == []
