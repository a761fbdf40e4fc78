"""How fast a multi-GB ENVI cube becomes a napari layer, and how fast one band reads.

Writes a synthetic ENVI cube (default 1024 x 1024 x 1000 uint16 = 2.1 GB) per interleave to a
temp dir, evicts it from the page cache (``posix_fadvise``, this file only) so the first reads are
cold, then times: ``get_reader`` claiming it, ``read_cube``, the reader's layer data (cube layer
with percentile contrast; RGB preview), building a ``napari.layers.Image`` (no viewer), and
reading one band cold and warm (the band napari shows when the slider moves). Cleans up after
itself.

    .venv/bin/python benchmarks/io.py [--lines 1024 --samples 1024 --bands 1000]
        [--interleave bsq,bip] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_mtmsd import _reader, io

_SHAPES = {"bsq": lambda h, w, b: (b, h, w), "bil": lambda h, w, b: (h, b, w),
           "bip": lambda h, w, b: (h, w, b)}  # fmt: skip


def write_envi(folder: Path, lines: int, samples: int, bands: int, interleave: str) -> Path:
    """A uint16 ENVI cube written through np.memmap in row blocks (no full copy in memory)."""
    data = folder / f"cube_{interleave}.img"
    mm = np.memmap(data, np.dtype("<u2"), "w+", shape=_SHAPES[interleave](lines, samples, bands))
    yy, xx = np.mgrid[0:lines, 0:samples]
    base = (1000 + 500 * np.sin(yy / 37.0) * np.cos(xx / 23.0)).astype(np.uint16)
    ramp = (np.arange(bands) % 400).astype(np.uint16)
    step = 64
    for r0 in range(0, lines, step):
        block = base[r0 : r0 + step, :, None] + ramp[None, None, :]  # (rows, W, B)
        if interleave == "bsq":
            mm[:, r0 : r0 + step, :] = block.transpose(2, 0, 1)
        elif interleave == "bil":
            mm[r0 : r0 + step] = block.transpose(0, 2, 1)
        else:
            mm[r0 : r0 + step] = block
    mm.flush()
    del mm
    wl = ", ".join(f"{w:.2f}" for w in np.linspace(400, 2500, bands))
    hdr = data.with_suffix(".hdr")
    hdr.write_text(
        f"ENVI\nsamples = {samples}\nlines = {lines}\nbands = {bands}\nheader offset = 0\n"
        f"file type = ENVI Standard\ndata type = 12\ninterleave = {interleave}\nbyte order = 0\n"
        f"wavelength units = nm\nwavelength = {{{wl}}}\n"
    )
    return hdr


def evict(path: Path) -> None:
    """Drop this file's pages from the page cache so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench(hdr: Path) -> dict:
    from napari.layers import Image

    Image(
        np.zeros((2, 2, 2))
    )  # napari's one-time set-up (unit registry, imports) is not the file's
    evict(hdr.with_suffix(".img"))
    r: dict = {"file_bytes": hdr.with_suffix(".img").stat().st_size}
    reader, r["get_reader_s"] = timed(lambda: _reader.get_reader(str(hdr)))
    cube, r["read_cube_s"] = timed(lambda: io.read_cube(hdr))
    layers, r["reader_all_layers_s"] = timed(lambda: reader(str(hdr)))
    (data, kwargs, _), (rgb, rgb_kwargs, _) = layers
    r["preview_shape"] = list(rgb.shape)
    r["preview_step"] = rgb_kwargs["scale"][0]
    _, r["cube_layer_data_s"] = timed(lambda: _reader.cube_layers(cube, preview=False))
    _, r["preview_s"] = timed(lambda: _reader.rgb_preview(cube))
    layer, r["napari_image_layer_s"] = timed(lambda: Image(data, **kwargs))
    band = data.shape[0] // 2
    evict(hdr.with_suffix(".img"))
    # np.array copies: slicing a memmap alone reads nothing
    _, r["one_band_cold_ms"] = timed(lambda: np.array(layer.data[band + 1]))
    warm = [timed(lambda: np.array(layer.data[band + 1]))[1] for _ in range(3)]
    r["one_band_warm_ms"] = min(warm)
    r["one_band_cold_ms"] *= 1000
    r["one_band_warm_ms"] *= 1000
    r["layer_shape"] = list(data.shape)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--bands", type=int, default=1000)
    ap.add_argument("--interleave", default="bsq,bip")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    results = {}
    folder = Path(tempfile.mkdtemp(prefix="mtmsd-io-bench-"))
    try:
        for inter in a.interleave.split(","):
            hdr, write_s = timed(
                lambda i=inter: write_envi(folder, a.lines, a.samples, a.bands, i)
            )
            results[inter] = {"write_s": write_s, **bench(hdr)}
            for f in folder.iterdir():
                f.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        ("file size (GB)", lambda r: f"{r['file_bytes'] / 1e9:.2f}"),
        ("write (s)", lambda r: f"{r['write_s']:.1f}"),
        ("get_reader (ms)", lambda r: f"{r['get_reader_s'] * 1e3:.1f}"),
        ("read_cube (ms)", lambda r: f"{r['read_cube_s'] * 1e3:.1f}"),
        ("cube layer data (ms)", lambda r: f"{r['cube_layer_data_s'] * 1e3:.1f}"),
        ("RGB preview (ms)", lambda r: f"{r['preview_s'] * 1e3:.1f}"),
        ("preview shape", lambda r: "x".join(map(str, r["preview_shape"]))),
        ("reader, all layers (ms)", lambda r: f"{r['reader_all_layers_s'] * 1e3:.1f}"),
        ("napari Image layer (ms)", lambda r: f"{r['napari_image_layer_s'] * 1e3:.1f}"),
        ("one band, cold (ms)", lambda r: f"{r['one_band_cold_ms']:.1f}"),
        ("one band, warm (ms)", lambda r: f"{r['one_band_warm_ms']:.1f}"),
    ]
    print(f"ENVI cube {a.lines} x {a.samples} x {a.bands} uint16")
    print(f"{'':26}" + "".join(f"{k:>12}" for k in results))
    for label, fmt in rows:
        print(f"{label:26}" + "".join(f"{fmt(r):>12}" for r in results.values()))
    if a.json:
        a.json.write_text(
            json.dumps({"shape": [a.lines, a.samples, a.bands], **results}, indent=1)
        )


if __name__ == "__main__":
    main()
