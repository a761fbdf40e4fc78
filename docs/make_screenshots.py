"""Screenshots of the docked workflow on Indian Pines for the user guide and the README.

Opens napari (needs a display: run under Xvfb), loads the Indian Pines sample, docks the MTMSD
panel and runs the workflow with a small, quick model, saving ``docs/images/*.png`` after each
step:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_screenshots.py \
        [--model out/ip_cpu] [--preset cpu --steps 300]

With ``--model`` a saved diffusion model is loaded after the pretraining screenshot (the
pretraining is stopped there), which saves minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

IMAGES = Path(__file__).resolve().parent / "images"


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a saved diffusion model directory")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps without --model")
    parser.add_argument("--split", default="random:0.1")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ensemble", type=int, default=None)
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_mtmsd._qt import MTMSDWidget
    from napari_mtmsd._sample_data import indian_pines

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-mtmsd: Indian Pines")
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    for data, kwargs, kind in indian_pines():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    gt_name = viewer.layers[-1].name
    widget = MTMSDWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MTMSD", area="right")
    written: list[Path] = []

    def settle(seconds: float = 0.3) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.01)

    def wait() -> None:
        while widget.runner.busy:
            app.processEvents()
            time.sleep(0.01)
        settle()

    def shot(name: str, section: str | None = None) -> None:
        if section is not None:
            for title, box in widget.sections.items():
                box.expand(animate=False) if title.startswith(section) else box.collapse(
                    animate=False
                )
        settle()
        path = args.out / f"{name}.png"
        viewer.screenshot(str(path), canvas_only=False)
        written.append(path)
        print("wrote", path)

    # 1. data and labels: a training split of the ground truth, coloured like the classes
    widget.data.gt_combo.setCurrentText(gt_name)
    widget.data.split_spec.setText(args.split)
    widget.data.split_from_ground_truth()
    viewer.layers[gt_name].visible = False
    shot("01_data_and_labels", "1.")

    # 2. model: pretraining with the live loss plot, ETA and Stop (shot mid-run)
    widget.model.preset.setCurrentText(args.preset)
    widget.model.steps.setValue(args.steps)
    widget.model.pretrain()
    while widget.runner.busy and len(widget.model.loss.values) < min(40, args.steps // 2):
        settle(0.2)
    shot("02_model", "2.")
    if args.model is not None:
        widget.runner.stop()
        wait()
        widget.model.load(args.model)
    else:
        wait()

    # 3. classify: extract, train and predict, scores against the ground truth
    classify = widget.classify
    if args.epochs:
        classify.epochs.setValue(args.epochs)
    if args.ensemble:
        classify.n_models.setValue(args.ensemble)
    classify.gt_combo.setCurrentText(gt_name)
    classify.extract()
    wait()
    classify.train_and_predict()
    wait()
    viewer.layers["training labels"].visible = False
    shot("03_prediction", "3.")
    viewer.layers["confidence"].visible = True
    viewer.layers["prediction"].visible = False
    shot("04_confidence", "3.")
    viewer.layers["confidence"].visible = False

    # 4. inspect: PCA of the features per timestep, and the timestep attention per class
    widget.inspect.show_pca()
    wait()
    viewer.dims.set_current_step(0, 1)  # t = 100: fine detail still visible
    widget.inspect.show_attention()
    wait()
    shot("05_inspect", "4.")
    viewer.close()
    return written


if __name__ == "__main__":
    main()
