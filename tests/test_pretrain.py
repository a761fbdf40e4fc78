"""Pretraining: loss falls, determinism, exact resume, checkpoints, 2-process DDP, bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mtmsd.errors import InputError, ModelFileError
from napari_mtmsd.model import RESUME, DiffusionModel
from napari_mtmsd.pretrain import iter_pretrain, pretrain


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The test machines have 2 shared cores: two OpenMP threads per process thrash (10x slower
    under load) on models this small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cube():
    """A small cube with spatial structure (smooth fields mixing 3 spectra) and a NaN pixel."""
    rng = np.random.default_rng(0)
    h, w, b = 24, 20, 12
    yy, xx = np.mgrid[0:h, 0:w] / 6.0
    fields = np.stack([np.sin(yy), np.cos(xx), np.sin(xx + yy)], axis=-1)
    spectra = rng.normal(size=(3, b))
    data = (fields @ spectra + 0.05 * rng.normal(size=(h, w, b))).astype(np.float32)
    data[3, 4, :] = np.nan
    from napari_mtmsd.io import Cube

    return Cube(data=data, name="toy")


def _states_equal(a: DiffusionModel, b: DiffusionModel) -> bool:
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_falls_and_records(cube):
    records = []
    model = pretrain(cube, preset="tiny", steps=60, device="cpu", seed=0, callback=records.append)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 60
    assert all(r["total"] == 60 for r in records if r["stage"] == "pretrain")
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert records[-1]["samples_per_s"] > 0
    assert model.config["step"] == 60 and model.config["complete"]
    assert model.n_components == 4 and model.patch_size == 16
    x = model.prepare(cube)
    assert x.shape == (24, 20, 4) and np.isfinite(x).all()


def test_deterministic_for_a_seed(cube):
    a = pretrain(cube, preset="tiny", steps=5, device="cpu", seed=3, precision="fp32")
    b = pretrain(cube, preset="tiny", steps=5, device="cpu", seed=3, precision="fp32")
    c = pretrain(cube, preset="tiny", steps=5, device="cpu", seed=4, precision="fp32")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_interrupted_then_resumed_equals_uninterrupted(cube, tmp_path):
    kw = dict(preset="tiny", steps=12, device="cpu", seed=0, precision="fp32", checkpoint_every=5)
    full = pretrain(cube, out_dir=tmp_path / "full", **kw)

    gen = iter_pretrain(cube, out_dir=tmp_path / "cut", **kw)
    for record in gen:
        if record.get("step") == 7 and "loss" in record:
            break
    gen.close()  # writes a checkpoint of step 7
    stopped = DiffusionModel.load(tmp_path / "cut")
    assert stopped.config["step"] == 7 and not stopped.config["complete"]

    records = []
    resumed = pretrain(cube, out_dir=tmp_path / "cut", resume=True, callback=records.append, **kw)
    assert [r["step"] for r in records if "loss" in r] == list(range(8, 13))
    assert _states_equal(full, resumed)
    assert full.fingerprint() == resumed.fingerprint()
    assert DiffusionModel.load(tmp_path / "cut").fingerprint() == full.fingerprint()
    raw_full = torch.load(tmp_path / "full" / RESUME, weights_only=True)["raw"]
    raw_cut = torch.load(tmp_path / "cut" / RESUME, weights_only=True)["raw"]
    assert all(torch.equal(raw_full[k], raw_cut[k]) for k in raw_full)


def test_resume_checks_the_cube(cube, tmp_path):
    pretrain(cube, preset="tiny", steps=2, device="cpu", out_dir=tmp_path / "m")
    from napari_mtmsd.io import Cube

    other = Cube(data=np.asarray(cube.data)[:, ::-1].copy(), name="other")
    with pytest.raises(InputError, match="other"):
        pretrain(other, preset="tiny", steps=4, device="cpu", out_dir=tmp_path / "m", resume=True)
    with pytest.raises(InputError, match="seed"):
        pretrain(
            cube, preset="tiny", steps=4, device="cpu", seed=9, out_dir=tmp_path / "m", resume=True
        )


def test_resume_with_corrupt_checkpoint(cube, tmp_path):
    pretrain(cube, preset="tiny", steps=2, device="cpu", out_dir=tmp_path / "m")
    data = (tmp_path / "m" / RESUME).read_bytes()
    (tmp_path / "m" / RESUME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        pretrain(cube, preset="tiny", steps=4, device="cpu", out_dir=tmp_path / "m", resume=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"batch_size": -2}, "batch_size"),
        ({"ema": 1.5}, "ema must be in"),
        ({"precision": "fp8"}, "precision"),
        ({"resume": True}, "needs out_dir"),
        ({"num_threads": 0}, "num_threads must be a positive integer"),
    ],
)
def test_bad_arguments(cube, kwargs, match):
    args = {"preset": "tiny", "device": "cpu", **kwargs}
    with pytest.raises(InputError, match=match):
        pretrain(cube, **args)


def test_bad_device(cube):
    from napari_mtmsd.errors import DeviceError

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceError, match="cuda"):
        pretrain(cube, preset="tiny", steps=1, device="cuda")


DDP_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from napari_mtmsd.io import Cube
    from napari_mtmsd.pretrain import pretrain
    data = np.load(sys.argv[1])
    model = pretrain(Cube(data=data, name="toy"), preset="tiny", steps=4, batch_size=8,
                     device="cpu", seed=0, precision="fp32", out_dir=sys.argv[2],
                     micro_batch=2)
    """
)


def test_ddp_two_processes_on_cpu(cube, tmp_path):
    """torchrun with 2 gloo processes trains the same model as one process (same global batch),
    each rank in 2 micro-batches (gradients all-reduced once, after the last: ``no_sync``)."""
    np.save(tmp_path / "cube.npy", np.asarray(cube.data))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path / "cube.npy"),
        str(tmp_path / "ddp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = DiffusionModel.load(tmp_path / "ddp")
    assert ddp.config["world_size"] == 2 and ddp.config["step"] == 4
    single = pretrain(
        cube, preset="tiny", steps=4, batch_size=8, device="cpu", seed=0, precision="fp32"
    )
    sd, ss = ddp.unet.state_dict(), single.unet.state_dict()
    for k in ss:
        torch.testing.assert_close(sd[k], ss[k], rtol=1e-4, atol=1e-5)
    assert not any(Path(tmp_path).glob(".tmp-*"))


def test_a_bar_from_python_unless_silenced(cube, capsys):
    pretrain(cube, preset="tiny", steps=3, device="cpu")
    err = capsys.readouterr().err
    assert "Pretrain: pretrain" in err and "3/3" in err and "loss=" in err
    pretrain(cube, preset="tiny", steps=3, device="cpu", progress=False)
    assert capsys.readouterr().err == ""
