"""Tiles as dask.distributed tasks: the single-process maps, from a LocalCluster and from a
scheduler with two worker processes started here; a stop cancels what is pending."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from napari_mtmsd._progress import run
from napari_mtmsd.errors import InputError
from napari_mtmsd.pipeline import iter_predict, predict, train
from test_tiled import FAST, SPEC, few_labels

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def bundles(tiny_model, small_scene):
    cube, gt = small_scene
    labels = few_labels(np.asarray(gt.data))
    return {m: train(tiny_model, cube, labels, SPEC, device="cpu", method=m, progress=False,
                     **FAST) for m in ("paper", "few-label")}  # fmt: skip


@pytest.fixture(scope="module")
def engine():
    from napari_mtmsd.distributed import DaskEngine

    with DaskEngine("local:2", processes=False) as e:
        yield e


@pytest.mark.parametrize("method", ["paper", "few-label"])
def test_dask_gives_the_single_process_maps(bundles, small_scene, engine, method):
    cube, _ = small_scene
    alone = predict(bundles[method], cube, device="cpu", progress=False)
    recs: list = []
    spread = run(iter_predict(bundles[method], cube, "cpu", engine=engine), recs.append)
    np.testing.assert_array_equal(spread[0], alone[0])
    # torch's thread count differs between a worker and this process: sums in another order
    np.testing.assert_allclose(spread[1], alone[1], atol=1e-3)
    assert sorted(r["region"] for r in recs if "region" in r) == [
        ((0, 24), (0, 24)), ((0, 24), (24, 32)), ((24, 40), (0, 24)), ((24, 40), (24, 32)),
    ]  # fmt: skip


STARTED: list[int] = []  # tiles begun by slow_part (workers are threads of this process)


def slow_part(work, k):
    """``distributed._part``, 0.3 s slower."""
    STARTED.append(k)
    time.sleep(0.3)
    return run(work.open().iter_part(k, (0, 1), 1))


def test_a_stop_cancels_the_pending_tasks(bundles, engine, monkeypatch):
    """Stopped after its first tile, a job of 16 slow tiles starts no further ones and leaves
    nothing on the cluster."""
    import napari_mtmsd.distributed as dist
    from napari_mtmsd.samples import synthetic_scene

    cube, _ = synthetic_scene(height=96, width=96, bands=30, n_classes=4, seed=2)
    STARTED.clear()
    monkeypatch.setattr(dist, "_part", slow_part)
    job = iter_predict(bundles["few-label"], cube, "cpu", engine=engine)
    next(r for r in job if "region" in r)
    job.close()
    n = len(STARTED)
    time.sleep(1.0)
    assert len(STARTED) == n < 16, STARTED
    assert not any(engine.client.processing().values())
    assert not engine.client.futures  # nothing of the job is kept


def very_slow_part(work, k):
    """``distributed._part``, 1.5 s slower: longer than the bound between records."""
    time.sleep(1.5)
    return run(work.open().iter_part(k, (0, 1), 1))


def test_records_come_while_the_tasks_compute(bundles, small_scene, engine, monkeypatch):
    """Tiles of 1.5 s each on the workers: this process still yields a record at least every
    half second (what napari's Stop and progress bar wait on)."""
    import napari_mtmsd.distributed as dist

    monkeypatch.setattr(dist, "_part", very_slow_part)
    stamps: list[float] = []
    run(iter_predict(bundles["paper"], small_scene[0], "cpu", engine=engine),
        lambda _: stamps.append(time.perf_counter()))  # fmt: skip
    assert max(np.diff(stamps)) < 0.5, np.diff(stamps)


def test_without_distributed_the_flag_says_how_to_install_it(monkeypatch):
    from napari_mtmsd.distributed import DaskEngine

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match=r"pip install 'napari-mtmsd\[distributed\]'"):
        DaskEngine("local:2")


def test_a_bad_address_is_one_line(monkeypatch):
    from napari_mtmsd.distributed import DaskEngine

    with pytest.raises(InputError, match="local:N with N >= 1"):
        DaskEngine("local:zero")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def test_predict_against_a_scheduler_and_two_workers(bundles, small_scene, tmp_path):
    """The CLI's ``predict --dask ADDRESS`` with ``dask scheduler`` and two ``dask worker``
    processes on localhost: the maps of a plain ``predict``, the input read by the workers."""
    from napari_mtmsd.cli import main
    from napari_mtmsd.io import read_labels

    cube, _ = small_scene
    np.save(tmp_path / "scene.npy", np.asarray(cube.data))
    bundles["few-label"].save(tmp_path / "clf")
    file = tmp_path / "scheduler.json"
    procs = [_start("distributed.cli.dask_scheduler", "--scheduler-file", str(file), "--port",
                    "0", "--no-dashboard", "--host", "127.0.0.1")]  # fmt: skip
    try:
        procs += [_start("distributed.cli.dask_worker", "--scheduler-file", str(file),
                         "--nthreads", "1", "--no-dashboard") for _ in range(2)]  # fmt: skip
        from distributed import Client

        deadline = time.monotonic() + 60
        while not file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        with Client(scheduler_file=str(file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        common = [str(tmp_path / "scene.npy"), "--classifier", str(tmp_path / "clf"), "--format",
                  "npy", "--device", "cpu"]  # fmt: skip
        assert main(["predict", *common, "-o", str(tmp_path / "alone")]) == 0
        assert main(["predict", *common, "-o", str(tmp_path / "spread"), "--dask", address]) == 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    for name in ("scene_classes.npy", "scene_confidence.npy"):
        alone, spread = (np.load(tmp_path / d / name) for d in ("alone", "spread"))
        np.testing.assert_array_equal(spread, alone)
    assert read_labels(tmp_path / "spread" / "scene_classes.npy").data.max() >= 1
