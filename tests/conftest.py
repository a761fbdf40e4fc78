"""Shared fixtures: the real data folder, and writers of small ENVI and MATLAB v7.3 files that do
not go through the package (so readers are tested against independently made files)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real fixtures); skips when a checkout has no such folder."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


ENVI_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float32): 4,
    np.dtype(np.float64): 5,
    np.dtype(np.complex64): 6,
    np.dtype(np.complex128): 9,
    np.dtype(np.uint16): 12,
    np.dtype(np.uint32): 13,
    np.dtype(np.int64): 14,
    np.dtype(np.uint64): 15,
}
_LAYOUT = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}


def write_envi_file(
    path: Path,
    cube: np.ndarray,
    interleave: str = "bsq",
    byte_order: int = 0,
    offset: int = 0,
    data_ext: str = ".img",
    extra: str = "",
) -> Path:
    """Write ``cube`` (H, W, B) as raw ENVI by hand; return the header path."""
    h, w, b = cube.shape
    dtype = cube.dtype.newbyteorder("<" if byte_order == 0 else ">")
    raw = np.ascontiguousarray(cube.transpose(_LAYOUT[interleave])).astype(dtype)
    data = path.with_suffix(data_ext) if data_ext else path.with_suffix("")
    data.write_bytes(b"\0" * offset + raw.tobytes())
    hdr = path.with_suffix(".hdr")
    hdr.write_text(
        "ENVI\n"
        f"samples = {w}\nlines = {h}\nbands = {b}\nheader offset = {offset}\n"
        f"file type = ENVI Standard\ndata type = {ENVI_CODES[cube.dtype]}\n"
        f"interleave = {interleave}\nbyte order = {byte_order}\n{extra}"
    )
    return hdr


@pytest.fixture
def envi_file() -> Callable[..., Path]:
    return write_envi_file


def write_mat73(path: Path, **arrays: np.ndarray) -> Path:
    """A MATLAB v7.3 file as MATLAB writes it: 512-byte header, arrays transposed in HDF5."""
    import h5py

    classes = {"f8": "double", "f4": "single", "u1": "uint8", "u2": "uint16", "i2": "int16",
               "i4": "int32", "u4": "uint32", "b1": "logical"}  # fmt: skip
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            ds = f.create_dataset(
                name, data=np.atleast_2d(arr).T
            )  # HDF5 holds MATLAB's axes reversed
            ds.attrs["MATLAB_class"] = np.bytes_(classes[arr.dtype.str[1:]])
    head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: tests HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(head.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    return path


@pytest.fixture
def mat73_file() -> Callable[..., Path]:
    return write_mat73


# A small synthetic scene and a tiny pretrained model, built once per session and shared by the
# feature, cache, pipeline and widget tests.


@pytest.fixture(scope="session")
def small_scene():
    from napari_mtmsd.samples import synthetic_scene

    return synthetic_scene(height=40, width=32, bands=30, n_classes=4, seed=1)


@pytest.fixture(scope="session")
def small_cube(small_scene):
    return small_scene[0]


@pytest.fixture(scope="session")
def tiny_model(small_cube):
    from napari_mtmsd.pretrain import pretrain

    return pretrain(small_cube, preset="tiny", steps=30, device="cpu", seed=0)


@pytest.fixture
def kernel_writes():
    """``with kernel_writes() as writes: ...`` lists the value-writing torch kernels that ran on
    real (not meta) tensors: what a module's random initialisation runs, and a load must not."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    prefixes = ("uniform_", "normal_", "zero_", "fill_", "copy_", "mul", "add", "sub", "rand")

    class KernelLog(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def __enter__(self) -> list[str]:
            super().__enter__()
            return self.writes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = [a for a in (*args, out) if isinstance(a, torch.Tensor)]
            name = func.overloadpacket.__name__
            if any(t.device.type != "meta" for t in tensors) and name.startswith(prefixes):
                self.writes.append(name)
            return out

    return KernelLog


# The docked panel (tests/test_qt_*.py): a viewer with the synthetic scene's cube and ground truth
# (scaled and shifted, so output layers must follow), and the error notifications it shows.


@pytest.fixture
def errors(monkeypatch):
    """Every error notification the widgets show, captured instead of displayed."""
    shown: list[str] = []
    for module in ("napari.utils.notifications",):
        monkeypatch.setattr(f"{module}.show_error", lambda text: shown.append(str(text)))
    return shown


@pytest.fixture
def scene():
    from napari_mtmsd.samples import synthetic_scene

    return synthetic_scene(height=32, width=32, bands=12, n_classes=3, noise=0.01, seed=3)


@pytest.fixture
def widget(make_napari_viewer, scene, errors):
    from napari_mtmsd._qt import MTMSDWidget
    from napari_mtmsd._reader import cube_layers, labels_layer

    viewer = make_napari_viewer()
    cube, gt = scene
    for data, kwargs, kind in [*cube_layers(cube, preview=False), labels_layer(gt)]:
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        layer.scale = (1.0, 2.0, 2.0) if kind == "image" else (2.0, 2.0)
        layer.translate = (0.0, 10.0, -4.0) if kind == "image" else (10.0, -4.0)
    w = MTMSDWidget(viewer)
    viewer.window.add_dock_widget(w, name="MTMSD")
    return w
