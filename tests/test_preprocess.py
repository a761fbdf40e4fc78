"""PCA + standardisation: correctness, subsampling, masking, chunking, band checks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtmsd.errors import InputError
from napari_mtmsd.io import Cube
from napari_mtmsd.preprocess import Preprocessor


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(30, 20, 3)) * [5.0, 2.0, 1.0]
    return (latent @ rng.normal(size=(3, 16)) + 0.01 * rng.normal(size=(30, 20, 16))).astype(
        np.float32
    )


def test_standardised_principal_components(data):
    pre = Preprocessor.fit(Cube(data=data, name="c"), n_components=3)
    z = pre.transform(data)
    assert z.shape == (30, 20, 3) and z.dtype == np.float32
    flat = z.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(flat.std(0, ddof=1), 1, rtol=1e-4)
    np.testing.assert_allclose(np.corrcoef(flat.T), np.eye(3), atol=1e-4)
    from sklearn.decomposition import PCA

    ref = PCA(3).fit_transform(data.reshape(-1, 16).astype(np.float64))
    ref /= ref.std(0, ddof=1)
    np.testing.assert_allclose(np.abs(flat), np.abs(ref), atol=1e-4)  # same up to sign


def test_invalid_pixels_are_ignored_and_subsampling_is_seeded(data):
    bad = data.copy()
    bad[0, :5] = np.nan
    bad[1, :5] = -1.0
    cube = Cube(data=bad, name="c", ignore_value=-1.0)
    a = Preprocessor.fit(cube, 3, max_pixels=100, seed=1)
    b = Preprocessor.fit(cube, 3, max_pixels=100, seed=1)
    c = Preprocessor.fit(cube, 3, max_pixels=100, seed=2)
    assert np.all(np.isfinite(a.components))
    np.testing.assert_array_equal(a.components, b.components)
    assert not np.array_equal(a.mean, c.mean)


def test_chunked_transform_equals_one_block(data, monkeypatch):
    pre = Preprocessor.fit(Cube(data=data, name="c"), 3)
    whole = pre.transform(data)
    import napari_mtmsd.preprocess as mod

    monkeypatch.setattr(mod, "CHUNK_BYTES", 1)  # one row at a time
    np.testing.assert_array_equal(pre.transform(data), whole)
    chunked = Preprocessor.fit(Cube(data=data, name="c"), 3)  # summation order differs only
    np.testing.assert_allclose(chunked.components, pre.components, rtol=1e-10, atol=1e-12)


def test_arrays_round_trip(data):
    pre = Preprocessor.fit(data, 2)  # a plain array is accepted
    again = Preprocessor.from_arrays(pre.to_arrays())
    np.testing.assert_array_equal(again.transform(data), pre.transform(data))


def test_errors(data):
    pre = Preprocessor.fit(Cube(data=data, name="c"), 3)
    with pytest.raises(
        InputError, match="other has 15 bands but the model was fitted on cubes with 16"
    ):
        pre.transform(data[..., :15], name="other")
    with pytest.raises(InputError, match="cannot keep 17 PCA components of a cube with 16 bands"):
        Preprocessor.fit(Cube(data=data, name="c"), 17)
    nan = np.full((4, 4, 16), np.nan, np.float32)
    with pytest.raises(InputError, match="fewer than 2 valid pixels"):
        Preprocessor.fit(Cube(data=nan, name="c"), 3)
