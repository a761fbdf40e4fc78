"""Screenshot of a georeferenced class map in napari with map coordinates and a legend.

The scene is the package's synthetic one, placed on an illustrative rotated UTM grid (zone 11N,
5 m pixels, ``rotation=12``) written into its ENVI ``map info``: no real sensor file is small
enough to ship. It is classified through the CLI (``pretrain``, ``train``, ``predict --format
tif``); the GeoTIFF class map is opened over the cube with ``NAPARI_MTMSD_COORDS=map``:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_geo_screenshot.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parent / "images"
MAP_INFO = ("map info = {UTM, 1, 1, 724500.0, 4074600.0, 5.0, 5.0, 11, North, WGS-84, "
            "units=Meters, rotation=12}\n")  # fmt: skip


def classify(work: Path, steps: int) -> tuple[Path, Path]:
    """(cube header, GeoTIFF class map) of the synthetic scene on its rotated grid."""
    import spectral.io.envi as envi

    from napari_mtmsd.cli import main
    from napari_mtmsd.io import LabelMap, read_cube, write_labels
    from napari_mtmsd.samples import synthetic_scene

    cube, gt = synthetic_scene(height=96, width=80, bands=30, n_classes=5, seed=3)
    hdr = work / "scene.hdr"
    envi.save_image(str(hdr), np.asarray(cube.data, np.float32), interleave="bil", force=True,
                    metadata={"wavelength": [f"{w:g}" for w in cube.wavelengths]})  # fmt: skip
    with open(hdr, "a") as f:
        f.write(MAP_INFO)
    georef = read_cube(hdr).georef
    train = np.where(np.random.default_rng(0).random(gt.data.shape) < 0.05, gt.data, 0)
    labels = write_labels(work / "train.tif", LabelMap(train, gt.class_names, georef=georef))
    cache = ["--cache-dir", str(work / "cache")]
    assert main(["pretrain", str(hdr), "-o", str(work / "model"), "--preset", "tiny",
                 "--steps", str(steps)]) == 0  # fmt: skip
    assert main(["train", str(hdr), "--labels", str(labels), "--model", str(work / "model"),
                 "-o", str(work / "clf"), "--n-models", "1", *cache]) == 0  # fmt: skip
    assert main(["predict", str(hdr), "--classifier", str(work / "clf"), "-o", str(work),
                 "--format", "tif", *cache]) == 0  # fmt: skip
    return hdr, work / "scene_classes.tif"


def add_legend(viewer, layer) -> None:
    """Colour swatches with class names, in map units, beside the class map's top right."""
    names = list(layer.features["class_name"])[1:]
    colors = [layer.colormap.map(i) for i in range(1, len(names) + 1)]
    y0, (y1, x1) = layer.extent.world[0][0], layer.extent.world[1]
    size = (y1 - y0) / 18
    boxes, texts = [], []
    for i, _ in enumerate(names):
        top = y1 - size * 1.5 * i
        boxes.append([[top, x1 + size], [top - size, x1 + 2 * size]])
        texts.append(top - size / 2)
    viewer.add_shapes(boxes, shape_type="rectangle", face_color=np.asarray(colors)[:, :4],
                      edge_width=0, name="legend")  # fmt: skip
    viewer.add_points(np.c_[texts, np.full(len(texts), x1 + 2.3 * size)], size=0,
                      face_color="transparent", border_width=0, name="legend names",
                      text={"string": names, "color": "white", "size": 12,
                            "anchor": "upper_left"})  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="pretraining steps (tiny preset)")
    parser.add_argument("--out", type=Path, default=IMAGES / "06_georeferenced.png")
    args = parser.parse_args(argv)
    os.environ["NAPARI_MTMSD_COORDS"] = "map"

    import napari
    from qtpy.QtWidgets import QApplication

    work = Path(tempfile.mkdtemp(prefix="mtmsd-geo-"))
    hdr, classes = classify(work, args.steps)
    viewer = napari.Viewer(title="napari-mtmsd: georeferenced class map (map coordinates)")
    viewer.window._qt_window.resize(1400, 900)
    image, _ = viewer.open(hdr, plugin="napari-mtmsd")
    image.visible = False  # the RGB preview stays under the class map
    (layer,) = viewer.open(classes, plugin="napari-mtmsd")
    layer.opacity = 0.75
    add_legend(viewer, layer)
    viewer.camera.orientation2d = ("up", "right")  # north up
    for each in viewer.layers:
        each.units = ("m",) * each.ndim if each.ndim == 2 else ("pixel", "m", "m")
    viewer.canvas.overlays.scale_bar.visible = True
    georef = layer.metadata["georef"]
    viewer.canvas.overlays.text.visible = True
    viewer.canvas.overlays.text.text = (
        f"EPSG:{georef.epsg()} {georef.crs_name()} | {georef.pixel_size[0]:g} m pixels | "
        f"rotation {georef.rotation:g} deg | axes: northing, easting"
    )
    viewer.reset_view()
    viewer.layers.selection.active = layer
    y, x = np.mean(layer.extent.world, axis=0)
    viewer.cursor.position = (viewer.dims.point[0], y, x)
    viewer.status = layer.get_status((y, x), view_direction=None, dims_displayed=[0, 1],
                                     world=True)  # the status bar: northing, easting  # fmt: skip
    app = QApplication.instance()
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print("wrote", args.out)
    return args.out


if __name__ == "__main__":
    main()
