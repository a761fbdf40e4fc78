"""Progress records and Stop: feature extraction yields a record at least once a second of work
(issue 15), with a step that counts pixels; the pacer that thins fine-grained records out."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from napari_mtmsd import _unet_passes as passes
from napari_mtmsd import cache
from napari_mtmsd import features as F
from napari_mtmsd._progress import Pacer
from napari_mtmsd.features import FeatureSpec, iter_extract_pixels, plan_tiles
from napari_mtmsd.unet import AttentionBlock, UNet

BOUND_S = 1.0


class WorkSeconds:
    """A clock of CPU seconds of this process per torch thread: the wall time the job would take
    on an otherwise idle machine, whatever else the shared machine runs meanwhile. Each interval
    is divided by the thread count of its end, since the thread tuner changes the count during
    a job (dividing the process's whole CPU time by the new count would read as a jump)."""

    def __init__(self) -> None:
        self.cpu, self.seconds = time.process_time(), 0.0

    def __call__(self) -> float:
        cpu = time.process_time()
        self.seconds += (cpu - self.cpu) / torch.get_num_threads()
        self.cpu = cpu
        return self.seconds


def timed(gen, clock=time.perf_counter) -> tuple[list[dict], list[float], object]:
    """Every record of a job with the seconds since the previous one (the first: since start)."""
    records, gaps, last = [], [], clock()
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            gaps.append(clock() - last)
            return records, gaps, stop.value
        now = clock()
        gaps.append(now - last)
        last = now


def test_pacer_thins_records_out():
    pacer = Pacer(0.05)
    assert not pacer.due()
    time.sleep(0.06)
    assert pacer.due() and not pacer.due()
    pacer.restart()
    assert not pacer.due()


@pytest.fixture(scope="module")
def cpu_preset():
    """The ``cpu`` preset's network (fresh weights: speed does not depend on them) and a scene
    of 64 x 64 pixels: one 128 x 128 tile, a second or two of work per old-style pass."""
    from napari_mtmsd.model import DiffusionModel
    from napari_mtmsd.preprocess import Preprocessor
    from napari_mtmsd.samples import synthetic_scene
    from napari_mtmsd.schedule import NoiseSchedule
    from napari_mtmsd.unet import PRESETS, UNet

    cube, _ = synthetic_scene(height=64, width=64, bands=30, n_classes=3, seed=2)
    cfg = PRESETS["cpu"]
    torch.manual_seed(0)
    pre = Preprocessor.fit(cube, cfg.in_channels, seed=0)
    model = DiffusionModel(UNet(cfg), NoiseSchedule("cosine", 1000), pre, {"preset": "cpu"})
    return model, cube


def test_cpu_preset_extraction_records_within_a_second(cpu_preset, tmp_path):
    """The whole job as napari runs it (cache.iter_build), the cpu preset, three noise draws:
    before the fix one record per batch of timesteps (seconds apart here). Seconds of work."""
    model, cube = cpu_preset
    spec = FeatureSpec(timesteps=(100, 500, 900), noise_draws=3)
    job = cache.iter_build(model, cube, spec, tmp_path, device="cpu")
    records, gaps, store = timed(job, WorkSeconds())
    assert max(gaps) < BOUND_S, [round(g, 2) for g in gaps]
    work = [r for r in records if r["stage"] == "features"]
    steps = [r["step"] for r in work]
    assert all(r["total"] == 64 * 64 for r in work) and steps[-1] == 64 * 64
    assert steps == sorted(steps) and len(set(steps)) > 4  # the bar moves within the tile
    assert store.shape == (64, 64, 3, sum(model.unet.stage_channels(spec.stages)))


@pytest.fixture
def slowed(monkeypatch):
    """Run a model as if this CPU did ``rate`` FLOP/s: every convolution and attention sleeps
    for its share, and extraction cuts its work for that rate. The ``tiny`` network then takes
    the time of a larger preset on a larger tile."""

    def slow(model, rate: float) -> None:
        def sleep(module, args, out):
            if isinstance(module, AttentionBlock):
                flops = 4.0 * out.shape[0] * out.shape[1] * (out.shape[2] * out.shape[3]) ** 2
            else:
                flops = 2.0 * out.numel() * module.weight.shape[1:].numel()
            time.sleep(flops / rate)

        kinds = (torch.nn.Conv2d, AttentionBlock)
        hooks = [
            m.register_forward_hook(sleep) for m in model.unet.modules() if isinstance(m, kinds)
        ]
        monkeypatch.setattr(passes, "CPU_FLOPS", {False: rate, True: rate})
        undo.extend(hooks)

    undo: list = []
    yield slow
    for hook in undo:
        hook.remove()


def test_paper_cost_scaled_records_within_a_second(tiny_model, small_cube, slowed, tmp_path):
    """The ``paper`` preset's cost per noised image (a 228 x 228 tile: 423 GFLOP, 1.4 s at
    300 GFLOP/s) given to the tiny network's tile, two draws: one pass of both took 2.8 s."""
    model, cube = tiny_model, small_cube
    H, W = cube.data.shape[:2]
    (tile,) = plan_tiles(H, W, model.patch_size, FeatureSpec(), 4)
    per_image = sum(passes.count_layer_flops(model.unet, tile.h, tile.w, FeatureSpec().stages)[0])
    slowed(model, rate=per_image / 1.4)
    spec = FeatureSpec(timesteps=(500,), noise_draws=2, bf16=False)
    _, gaps, _ = timed(cache.iter_build(model, cube, spec, tmp_path, device="cpu"))
    assert max(gaps) < BOUND_S / 2, [round(g, 2) for g in gaps]
    assert sum(gaps) > 2.5  # the slowing took effect


def test_pixel_extraction_counts_the_pixels_computed(tiny_model, small_cube):
    """Dense: the served pixels of the tiles run; patch: the pixels asked for."""
    coords = np.array([[0, 0], [39, 31], [20, 5]])
    spec = FeatureSpec(tile=48, margin=4, timesteps=(100, 600), stages=(0, 2), bf16=False)
    records, _, _ = timed(iter_extract_pixels(tiny_model, small_cube, coords, spec, "cpu"))
    served = [
        (t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0])
        for t in plan_tiles(40, 32, tiny_model.patch_size, spec, 4)
        if any(t.rows[0] <= r < t.rows[1] and t.cols[0] <= c < t.cols[1] for r, c in coords)
    ]
    assert len(served) > 1 and records[-1]["step"] == records[-1]["total"] == sum(served)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    patch = FeatureSpec(mode="patch", timesteps=(100, 600), stages=(0, 2), bf16=False)
    records, _, _ = timed(iter_extract_pixels(tiny_model, small_cube, coords, patch, "cpu"))
    assert records[-1]["step"] == records[-1]["total"] == len(coords)


@pytest.mark.parametrize("preset, side", [("tiny", 48), ("cpu", 212), ("paper", 228)])
def test_layer_flops_match_torchs_counter(preset, side):
    """The cost model that cuts the work: torch's FlopCounterMode on each paused layer."""
    from torch.utils.flop_counter import FlopCounterMode

    from napari_mtmsd.unet import PRESETS, UNet

    stages = (0, 1, 2, 3, 5)
    ours, shapes = passes.count_layer_flops(UNet(PRESETS[preset]), side, side, stages)
    with torch.device("meta"):
        net = UNet(PRESETS[preset])
        x = torch.empty(1, net.config.in_channels, side, side)
        t = torch.zeros(1, dtype=torch.long)
    theirs, counted = [], 0
    with FlopCounterMode(display=False) as counter:
        gen = net.iter_forward_features(x, t, stages)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                maps = stop.value
                break
            theirs.append(counter.get_total_flops() - counted)
            counted += theirs[-1]
    assert np.allclose(ours, theirs, rtol=0.01)  # the time embedding's linear layers left out
    assert shapes == [tuple(m.shape[1:]) for m in maps]


def test_results_do_not_depend_on_how_the_work_is_cut(tiny_model, small_cube, monkeypatch):
    """One image per pass (draws summed over passes) against every draw and timestep in one."""
    coords = np.argwhere(np.ones((40, 32), bool))[::7]
    spec = FeatureSpec(timesteps=(100, 500, 900), stages=(0, 1, 2), noise_draws=3, bf16=False)
    whole = F.extract_pixels(tiny_model, small_cube, coords, spec, device="cpu")
    monkeypatch.setattr(passes, "CPU_FLOPS", {False: 1.0, True: 1.0})
    cut = F.extract_pixels(tiny_model, small_cube, coords, spec, device="cpu")
    for a, b in zip(whole, cut, strict=True):
        np.testing.assert_allclose(
            a.astype(np.float32), b.astype(np.float32), rtol=2e-3, atol=2e-3
        )


def test_records_during_extraction_leave_no_torch_mode_on(tiny_model, small_cube):
    """Autocast and inference mode are entered per layer: the caller runs outside them."""
    gen = iter_extract_pixels(tiny_model, small_cube, np.array([[3, 3]]), FeatureSpec(), "cpu")
    for _ in gen:
        assert not torch.is_inference_mode_enabled()
        assert not torch.is_autocast_enabled("cpu")


def test_paused_pass_equals_the_plain_pass():
    """``iter_forward_features`` pauses between layers; nothing else differs (bitwise)."""
    from napari_mtmsd._progress import run
    from napari_mtmsd.unet import PRESETS, UNet

    torch.manual_seed(0)
    net = UNet(PRESETS["tiny"]).eval()
    for p in net.parameters():  # zero-initialised layers would hide mistakes
        torch.nn.init.normal_(p, std=0.1)
    x, t = torch.randn(2, 4, 24, 16), torch.tensor([5, 700])
    with torch.no_grad():
        plain = net.forward_features(x, t, [5, 0, 2])
        paused = run(net.iter_forward_features(x, t, [5, 0, 2]))
    for a, b in zip(plain, paused, strict=True):
        assert torch.equal(a, b)


def test_pretraining_step_of_paper_cost_yields_within_a_second(monkeypatch):
    """A ``tiny`` step slowed to 2 s (every convolution sleeps for its FLOPs at a slow rate,
    and the micro-batch cost model knows that rate): micro-batches of one patch, a record
    after each, instead of one record per step (the paper preset took 8-17 s a step)."""
    from napari_mtmsd import _pretrain_loop
    from napari_mtmsd.io import Cube
    from napari_mtmsd.pretrain import iter_pretrain
    from napari_mtmsd.unet import PRESETS

    cfg = PRESETS["tiny"]
    per_patch = sum(passes.count_layer_flops(UNet(cfg), 16, 16, range(9))[0])
    rate = 8 * per_patch / 2.0  # a batch of 8 in 2 s

    def sleep(module, args, out):
        if isinstance(module, torch.nn.Conv2d):
            time.sleep(2.0 * out.numel() * module.weight.shape[1:].numel() / rate)

    monkeypatch.setattr(_pretrain_loop, "TRAIN_FLOPS", {False: rate, True: rate})
    cube = Cube(data=np.random.default_rng(0).normal(size=(20, 20, 6)).astype(np.float32))
    hook = torch.nn.modules.module.register_module_forward_hook(sleep)
    try:
        job = iter_pretrain(cube, preset="tiny", steps=1, device="cpu", num_threads=1)
        records, gaps, _ = timed(job)
    finally:
        hook.remove()
    assert max(gaps) < BOUND_S, [round(g, 2) for g in gaps]
    assert sum(gaps) > 1.8  # the slowing took effect
    assert [r["micro"] for r in records if "micro" in r] == list(range(1, 9))


def test_hash_in_chunks_is_the_one_shot_hash(monkeypatch):
    """The cube's digest (a cache key) does not depend on how it is read; a record per chunk."""
    import hashlib

    import napari_mtmsd.io._types as types
    from napari_mtmsd._progress import run
    from napari_mtmsd.io import Cube

    data = np.random.default_rng(0).normal(size=(30, 7, 5)).astype(">f4")
    expected = hashlib.sha256(b"(30, 7, 5)|>f4|" + data.tobytes()).hexdigest()
    monkeypatch.setattr(types, "HASH_BYTES", 7 * 5 * 4 * 4)  # four rows
    records = []
    assert run(Cube(data=data).iter_sha256(), records.append) == expected
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert Cube(data=data[:, ::-1][:, ::-1]).sha256() == expected  # a strided view: same bytes


def test_embedding_sums_by_chunk_equal_numpys_mean_and_std():
    """Mean and std of the embedding's sample summed chunk by chunk (records between): the
    same float32 numbers as ``x.mean(0)`` / ``x.std(0)``, and ``x`` left untouched."""
    from napari_mtmsd._progress import run
    from napari_mtmsd.embedding import _iter_sum

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(1001, 300)) * rng.uniform(0, 100, 300) + 40).astype(np.float32)
    before = x.copy()
    mean = run(_iter_sum(x, 97, None, 0, lambda done: {"step": done}))
    mean /= len(x)
    var = run(_iter_sum(x, 97, mean, 0, lambda done: {"step": done}))
    np.testing.assert_array_equal(mean, x.mean(0))
    np.testing.assert_array_equal(np.sqrt(var / len(x)), x.std(0))
    np.testing.assert_array_equal(x, before)
