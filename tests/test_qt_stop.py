"""Stop and closing napari during Extract with the ``cpu`` preset take effect within a second and
leave no cache entry, complete or partial (issue 15). Under Xvfb with a real viewer."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("qtpy")

from napari_mtmsd import cache
from napari_mtmsd._qt import MTMSDWidget

BOUND_S = 1.0


@pytest.fixture(scope="module")
def cpu_scene():
    """The ``cpu`` preset's network (fresh weights: speed does not depend on them) on a
    96 x 96 scene: seconds of extraction with the default 19 timesteps and 3 draws."""
    from napari_mtmsd.model import DiffusionModel
    from napari_mtmsd.preprocess import Preprocessor
    from napari_mtmsd.samples import synthetic_scene
    from napari_mtmsd.schedule import NoiseSchedule
    from napari_mtmsd.unet import PRESETS, UNet

    cube, _ = synthetic_scene(height=96, width=96, bands=30, n_classes=3, seed=4)
    cfg = PRESETS["cpu"]
    torch.manual_seed(0)
    pre = Preprocessor.fit(cube, cfg.in_channels, seed=0)
    model = DiffusionModel(UNet(cfg), NoiseSchedule("cosine", 1000), pre, {"preset": "cpu"})
    return model, cube


@pytest.fixture
def extracting(make_napari_viewer, cpu_scene, qtbot, tmp_path, monkeypatch):
    """A viewer whose panel is extracting features with the cpu preset, past its first pass."""
    from napari_mtmsd._reader import cube_layers

    monkeypatch.setenv("NAPARI_MTMSD_CACHE", str(tmp_path))
    model, cube = cpu_scene
    viewer = make_napari_viewer()
    for data, kwargs, _ in cube_layers(cube, preview=False):
        viewer.add_image(data, **kwargs)
    w = MTMSDWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.session.ws.set_model(model)
    w.model.device.setCurrentText("cpu")
    steps: list[int] = []
    w.runner.progress.connect(lambda record: steps.append(int(record.get("step", 0))))
    w.classify.extract()
    worker = w.runner.worker
    qtbot.waitUntil(lambda: len([s for s in steps if s > 0]) >= 2, timeout=60_000)
    return viewer, w, worker


def _nothing_written(root) -> bool:
    return not cache.entries(root) and not any(root.rglob("*.npy"))


def test_stop_during_extract_within_a_second(extracting, qtbot, tmp_path):
    _, w, _ = extracting
    t0 = time.perf_counter()
    w.stop_btn.click()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=30_000)
    assert time.perf_counter() - t0 < BOUND_S
    assert "stopped" in w.status.text() and w.classify.current_store() is None
    assert _nothing_written(tmp_path)


def test_closing_napari_during_extract_within_a_second(extracting, qtbot, tmp_path):
    """Closing the window stops the job from the panel's teardown, which waits for it: that
    wait is what must stay under a second (napari's own closing takes its time around it)."""
    viewer, w, worker = extracting
    runner, waits = w.runner, []
    stop_and_wait = runner.stop_and_wait

    def timed_stop_and_wait(*args, **kwargs):
        t0 = time.perf_counter()
        stop_and_wait(*args, **kwargs)
        waits.append(time.perf_counter() - t0)

    runner.stop_and_wait = timed_stop_and_wait
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    assert len(waits) == 1 and waits[0] < BOUND_S, waits
    assert _nothing_written(tmp_path)
