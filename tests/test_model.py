"""Model directory: exact round trip, fingerprint, prepare, and clear errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_mtmsd._atomic import MARKER
from napari_mtmsd.errors import InputError, ModelFileError
from napari_mtmsd.io import Cube
from napari_mtmsd.model import CONFIG, FORMAT_VERSION, PREPROCESS, WEIGHTS, DiffusionModel
from napari_mtmsd.preprocess import Preprocessor
from napari_mtmsd.schedule import NoiseSchedule
from napari_mtmsd.unet import PRESETS, UNet


@pytest.fixture(scope="module")
def cube():
    rng = np.random.default_rng(0)
    return Cube(data=rng.normal(size=(16, 16, 9)).astype(np.float32), name="toy")


@pytest.fixture(scope="module")
def model(cube):
    torch.manual_seed(0)
    unet = UNet(PRESETS["tiny"])
    for p in unet.parameters():  # non-trivial weights everywhere
        torch.nn.init.normal_(p, std=0.1)
    pre = Preprocessor.fit(cube, 4)
    return DiffusionModel(
        unet,
        NoiseSchedule(),
        pre,
        {"preset": "tiny", "seed": 0, "step": 3, "source": {"name": "toy"}},
    )


@pytest.fixture
def saved(model, tmp_path):
    return model.save(tmp_path / "m")


def test_round_trip_is_exact(model, saved, cube):
    assert {p.name for p in saved.iterdir()} == {CONFIG, WEIGHTS, PREPROCESS, MARKER}
    loaded = DiffusionModel.load(saved)
    a, b = model.unet.state_dict(), loaded.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.fingerprint() == model.fingerprint()
    np.testing.assert_array_equal(loaded.prepare(cube), model.prepare(cube))
    cfg = json.loads((saved / CONFIG).read_text())
    assert (
        cfg["format_version"] == FORMAT_VERSION and cfg["n_parameters"] == model.unet.n_parameters
    )
    assert cfg["n_bands"] == 9 and cfg["architecture"]["in_channels"] == 4
    assert {"torch_version", "package_version", "schedule", "preset", "seed", "step"} <= set(cfg)
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.unet(x, torch.tensor([7])), model.unet(x, torch.tensor([7])), rtol=0, atol=0
        )


def test_load_reads_and_does_not_initialise(saved, kernel_writes):
    # an initialisation the file overwrites would be wasted work, and on napari's main thread it
    # gives that thread an OpenMP team that slows the compute thread (_qt/_workers.compute_pool)
    with kernel_writes() as writes:
        loaded = DiffusionModel.load(saved)
    assert writes == []
    params = list(loaded.unet.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in params)
    with kernel_writes() as writes:
        UNet(PRESETS["tiny"])
    assert writes  # the check sees an initialisation when there is one


def test_fingerprint_changes_with_weights(model):
    other = DiffusionModel(UNet(PRESETS["tiny"]), model.schedule, model.preprocessor)
    assert other.fingerprint() != model.fingerprint()


def test_prepare_checks_bands_and_masks_invalid(model):
    with pytest.raises(
        InputError, match="has 8 bands but this model was pretrained on cubes with 9"
    ):
        model.prepare(Cube(data=np.zeros((4, 4, 8), np.float32), name="eight"))
    data = np.ones((4, 4, 9), np.float32)
    data[1, 2] = np.nan
    x = model.prepare(Cube(data=data, name="n"))
    assert np.isfinite(x).all() and np.all(x[1, 2] == 0)


def test_missing_directory_and_files(saved, tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        DiffusionModel.load(tmp_path / "nope")
    (saved / WEIGHTS).unlink()
    with pytest.raises(ModelFileError, match=f"{WEIGHTS} is missing"):
        DiffusionModel.load(saved)
    (saved / CONFIG).unlink()
    with pytest.raises(ModelFileError, match="not a napari-mtmsd model directory"):
        DiffusionModel.load(saved)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_weights(saved, damage):
    data = bytearray((saved / WEIGHTS).read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[-10] ^= 0xFF
    (saved / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        DiffusionModel.load(saved)


def test_unreadable_safetensors_with_matching_hash(saved):
    """A file whose recorded hash was updated too (e.g. hand-edited) still fails cleanly."""
    (saved / WEIGHTS).write_bytes(b"not a safetensors file")
    _rehash(saved, WEIGHTS)
    with pytest.raises(ModelFileError, match="cannot read the weights"):
        DiffusionModel.load(saved)


def test_mismatched_architecture(saved):
    cfg = json.loads((saved / CONFIG).read_text())
    cfg["architecture"]["model_channels"] = 16
    (saved / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="does not match the architecture"):
        DiffusionModel.load(saved)


def test_other_format_version_and_bad_json(saved):
    cfg = json.loads((saved / CONFIG).read_text())
    cfg["format_version"] = 0
    (saved / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="format version 0"):
        DiffusionModel.load(saved)
    (saved / CONFIG).write_text("{broken")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        DiffusionModel.load(saved)


def _rehash(path, name):
    from napari_mtmsd._atomic import sha256_file

    cfg = json.loads((path / CONFIG).read_text())
    cfg["files"][name] = sha256_file(path / name)
    (path / CONFIG).write_text(json.dumps(cfg))
