"""Sample data: Indian Pines (AVIRIS, shipped offline by ``tensorly``) and a synthetic scene.

Indian Pines: AVIRIS, 12 June 1992, Purdue Agronomy farm; Baumgardner, Biehl, Landgrebe (2015),
doi:10.4231/R7RX991C (CC BY 3.0); the 200-band corrected cube and ground truth as distributed by
the Grupo de Inteligencia Computacional (UPV/EHU), through the BSD-3 ``tensorly`` package.
"""

from __future__ import annotations

import numpy as np

from .io._types import Cube, LabelMap, default_colors

INDIAN_PINES_CLASSES = [
    "Alfalfa",
    "Corn-notill",
    "Corn-mintill",
    "Corn",
    "Grass-pasture",
    "Grass-trees",
    "Grass-pasture-mowed",
    "Hay-windrowed",
    "Oats",
    "Soybean-notill",
    "Soybean-mintill",
    "Soybean-clean",
    "Wheat",
    "Woods",
    "Buildings-Grass-Trees-Drives",
    "Stone-Steel-Towers",
]

# Crop families share hues (corn: oranges, soybean: purples, grass: greens): maps read at a glance.
INDIAN_PINES_COLORS = np.array(
    [
        (0, 0, 0),  # unlabelled
        (255, 215, 0),  # Alfalfa
        (230, 97, 1),  # Corn-notill
        (253, 141, 60),  # Corn-mintill
        (166, 54, 3),  # Corn
        (116, 196, 118),  # Grass-pasture
        (35, 139, 69),  # Grass-trees
        (199, 233, 192),  # Grass-pasture-mowed
        (191, 129, 45),  # Hay-windrowed
        (255, 255, 153),  # Oats
        (188, 128, 189),  # Soybean-notill
        (106, 61, 154),  # Soybean-mintill
        (222, 119, 174),  # Soybean-clean
        (66, 146, 198),  # Wheat
        (0, 68, 27),  # Woods
        (150, 150, 150),  # Buildings-Grass-Trees-Drives
        (215, 25, 28),  # Stone-Steel-Towers
    ],
    dtype=np.uint8,
)


def load_indian_pines() -> tuple[Cube, LabelMap]:
    """The 145 x 145 x 200 Indian Pines cube (uint16) with 200 wavelengths in nm and its 16-class
    ground truth, read offline from the ``tensorly`` package."""
    from tensorly.datasets import load_indian_pines as _load

    bunch = _load()
    tensor = np.asarray(bunch.tensor)
    # tensorly gives float64 copies of integer radiances: uint16 keeps them exactly, 4x smaller.
    if np.array_equal(tensor, np.round(tensor)) and tensor.min() >= 0 and tensor.max() < 2**16:
        tensor = tensor.astype(np.uint16)
    gt = np.asarray(bunch.ticks[0]).astype(np.uint8)
    wavelengths = np.asarray(bunch.ticks[1], dtype=np.float64)
    meta = {"sample": "indian_pines", "source": "tensorly.datasets.load_indian_pines"}
    cube = Cube(
        data=tensor,
        wavelengths=wavelengths,
        wavelength_units="nm",
        name="Indian Pines",
        metadata=meta,
    )
    labels = LabelMap(
        data=gt,
        class_names=list(INDIAN_PINES_CLASSES),
        colors=INDIAN_PINES_COLORS.copy(),
        name="Indian Pines ground truth",
        metadata=dict(meta),
    )
    return cube, labels


def _class_spectra(rng: np.random.Generator, n_classes: int, wl: np.ndarray) -> np.ndarray:
    """(K, B) smooth reflectance-like spectra: a sloped baseline plus a few Gaussian features."""
    x = (wl - wl.min()) / max(float(np.ptp(wl)), 1e-9)
    spectra = np.empty((n_classes, wl.size), dtype=np.float64)
    for k in range(n_classes):
        s = rng.uniform(0.15, 0.4) + rng.uniform(-0.15, 0.15) * x
        for _ in range(3):
            s += rng.uniform(-0.2, 0.25) * np.exp(
                -0.5 * ((x - rng.uniform(0, 1)) / rng.uniform(0.04, 0.2)) ** 2
            )
        spectra[k] = s
    return np.clip(spectra, 0.02, 0.95)


#: sides of a synthetic scene: 1000 x 1000 takes seconds, this takes minutes
MAX_SYNTHETIC_SIDE = 8192


def _check_synthetic_size(height: int, width: int, bands: int, n_classes: int) -> None:
    """ValueError before allocating a scene larger than a side bound or the memory at hand (the
    cube, a distance per region seed and the labels, float32)."""
    from .io._limits import memory_available

    if max(height, width) > MAX_SYNTHETIC_SIDE or bands > 4096:
        raise ValueError(
            f"a synthetic scene is at most {MAX_SYNTHETIC_SIDE} x {MAX_SYNTHETIC_SIDE} pixels and "
            f"4096 bands, got {height} x {width} x {bands}"
        )
    need = 4 * height * width * (2 * bands + 3 * n_classes + 2)
    if need > memory_available() // 2:
        raise ValueError(
            f"a {height} x {width} x {bands} synthetic scene needs about {need / 2**30:.1f} GB, "
            "more than this machine can spare now"
        )


def synthetic_scene(
    height: int = 64,
    width: int = 64,
    bands: int = 50,
    n_classes: int = 5,
    noise: float = 0.02,
    seed: int = 0,
) -> tuple[Cube, LabelMap]:
    """A seeded scene of Voronoi regions (3 per class), each class with a smooth spectrum scaled
    per region, mixed linearly across borders a few pixels wide, plus Gaussian noise.

    Float32 reflectance in [0, 1] at wavelengths 400..2500 nm; every pixel is labelled (the class
    of its nearest region seed). 1000 x 1000 x 50 takes about two seconds on two cores.
    """
    if height < 2 or width < 2:
        raise ValueError(f"height and width must be at least 2, got {height} x {width}")
    if bands < 3:
        raise ValueError(f"bands must be at least 3, got {bands}")
    if not 1 <= n_classes <= 255:
        raise ValueError(f"n_classes must be in 1..255, got {n_classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    _check_synthetic_size(height, width, bands, n_classes)
    rng = np.random.default_rng(seed)
    wl = np.linspace(400.0, 2500.0, bands)
    spectra = _class_spectra(rng, n_classes, wl)
    n_seeds = 3 * n_classes
    seed_class = rng.permutation(np.arange(n_seeds) % n_classes)
    seed_spectra = (spectra[seed_class] * rng.uniform(0.9, 1.1, (n_seeds, 1))).astype(np.float32)
    centres = rng.uniform(0, 1, (n_seeds, 2)) * (height, width)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    dist = np.empty((height, width, n_seeds), dtype=np.float32)
    for i, (cy, cx) in enumerate(centres):
        dist[:, :, i] = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    nearest = dist.argmin(axis=2)
    # Soft membership: a region's weight falls by e every `tau` pixels past the nearest border.
    tau = max(0.75, 0.01 * min(height, width))
    dist -= dist.min(axis=2, keepdims=True)
    np.exp(-dist / tau, out=dist)
    dist /= dist.sum(axis=2, keepdims=True)
    cube = (dist.reshape(-1, n_seeds) @ seed_spectra).reshape(height, width, bands)
    del dist
    if noise > 0:
        cube += rng.standard_normal(cube.shape, dtype=np.float32) * np.float32(noise)
    np.clip(cube, 0.0, 1.0, out=cube)
    labels = (seed_class[nearest] + 1).astype(np.uint8)
    params = {"height": height, "width": width, "bands": bands, "n_classes": n_classes,
              "noise": noise, "seed": seed}  # fmt: skip
    meta = {"sample": "synthetic", "params": params}
    return (
        Cube(data=cube, wavelengths=wl, wavelength_units="nm", name="synthetic", metadata=meta),
        LabelMap(
            data=labels,
            class_names=[f"class {k}" for k in range(1, n_classes + 1)],
            colors=default_colors(n_classes),
            name="synthetic ground truth",
            metadata=dict(meta),
        ),
    )
