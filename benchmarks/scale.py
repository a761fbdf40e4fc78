"""Cost against scene size: seconds, pixels per second, peak memory and bytes on disk of every
step (pretrain, extract, train, predict) on synthetic scenes of 0.25 to 16 megapixels, in one
process and on a local dask.distributed cluster of two workers.

Each scene is written by this script as a memory-mapped int16 ``.npy`` cube (64 bands: fields of
ten materials with noise, the layout of a real sensor's reflectance counts) beside a sparse label
map (12 pixels of each material). Each step is the command line run in its own process, so its
peak memory (resident, and of that the anonymous part, which excludes the pages of memory-mapped
files the kernel can drop at will; sampled over the process tree, dask workers included) is the
step's alone. The ``tiny`` preset keeps
the diffusion model cheap: what grows with the scene is the tiled work and the storage.

    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale --json benchmarks/results/scale.json
    .venv/bin/python benchmarks/scale.py --from-json benchmarks/results/scale.json   # table, plot

It writes the "Scale" section of docs/benchmarks.md and docs/images/scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "napari_mtmsd.cli"]
BANDS = 64
MATERIALS = 10
MARK = "<!-- scale -->"
STEPS = (
    "pretrain",
    "extract",
    "train",
    "predict (from the cache)",
    "predict (streamed tiles)",
    "predict (streamed, dask local:2)",
)


def write_scene(folder: Path, megapixels: float, seed: int = 0) -> tuple[Path, Path]:
    """A square int16 cube of about ``megapixels`` and its label map, written a band of rows at
    a time (the scene is never held in memory)."""
    side = round(float(np.sqrt(megapixels * 1e6)) / 16) * 16
    rng = np.random.default_rng(seed)
    spectra = rng.uniform(500, 4000, (MATERIALS, BANDS)).astype(np.float32)
    centres = rng.uniform(0, side, (4 * MATERIALS, 2))  # fields: nearest of 40 seeds
    material = np.arange(len(centres)) % MATERIALS
    folder.mkdir(parents=True, exist_ok=True)
    cube_path, labels_path = folder / "cube.npy", folder / "labels.npy"
    cube = np.lib.format.open_memmap(cube_path, "w+", np.int16, (side, side, BANDS))
    for r0 in range(0, side, 256):
        rr, cc = np.mgrid[r0 : min(r0 + 256, side), 0:side]
        field = material[_nearest(rr, cc, centres)]
        noise = rng.normal(0, 150, (*field.shape, BANDS)).astype(np.float32)
        cube[r0 : r0 + len(rr)] = np.clip(spectra[field] + noise, 0, 32767).astype(np.int16)
    cube.flush()
    del cube
    # labels: pixels around each field's seed, each labelled with the material it lies in
    points = (centres[:, None] + rng.normal(0, side / 200, (len(centres), 3, 2))).reshape(-1, 2)
    points = np.clip(np.round(points), 0, side - 1).astype(int)
    labels = np.zeros((side, side), np.uint8)
    labels[points[:, 0], points[:, 1]] = (
        material[_nearest(points[:, 0], points[:, 1], centres)] + 1
    )
    np.save(labels_path, labels)
    return cube_path, labels_path


def _nearest(rr: np.ndarray, cc: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (rr[..., None] - centres[:, 0]) ** 2 + (cc[..., None] - centres[:, 1]) ** 2
    return d.argmin(-1)


def _tree_memory(pid: int) -> tuple[int, int]:
    """Resident and anonymous (not file-backed: no memory-mapped cube or cache pages) bytes of a
    process and its descendants (the dask workers included)."""
    import psutil

    rss = anon = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) << 10
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) << 10
    return rss, anon


def timed(args: list[str], env: dict[str, str]) -> dict:
    """Run one command line: seconds, and the peak resident and anonymous memory of its process
    tree (MB), sampled every 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            rss, anon = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], anon)
            time.sleep(0.05)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out = proc.stdout.read().decode(errors="replace")
    proc.wait()
    watcher.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak[0] / 2**20, "peak_anon_mb": peak[1] / 2**20}


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_scene(folder: Path, megapixels: float, a: argparse.Namespace, env: dict) -> dict:
    cube, labels = write_scene(folder, megapixels)
    n = int(np.prod(np.load(cube, mmap_mode="r").shape[:2]))
    cache, model, clf = folder / "cache", folder / "model", folder / "classifier"
    spec = ["--timesteps", a.timesteps, "--noise-draws", str(a.noise_draws)]
    cached = ["--cache-dir", str(cache), "--device", "cpu"]
    predict = [*CLI, "predict", str(cube), "--classifier", str(clf), "--format", "npy"]
    cmds = {
        "pretrain": [*CLI, "pretrain", str(cube), "-o", str(model), "--preset", "tiny",
                     "--steps", str(a.pretrain_steps), "--seed", "0", "--device", "cpu"],
        "extract": [*CLI, "extract", str(cube), "--model", str(model), *spec, *cached,
                    "-o", str(folder / "export")],
        "train": [*CLI, "train", str(cube), "--labels", str(labels), "--model", str(model),
                  "-o", str(clf), "--method", a.method, *spec, *cached],
        "predict (from the cache)": [*predict, "-o", str(folder / "maps"), *cached],
        "predict (streamed tiles)": [*predict, "-o", str(folder / "maps_tiles"),
                                     "--device", "cpu"],
        "predict (streamed, dask local:2)": [*predict, "-o", str(folder / "maps_dask"),
                                             "--device", "cpu", "--dask", "local:2"],
    }  # fmt: skip
    out: dict = {"megapixels": n / 1e6, "pixels": n, "steps": {}}
    for name, args in cmds.items():
        rec = timed(args, env)
        rec["px_per_s"] = n / rec["seconds"]
        out["steps"][name] = rec
        print(f"{n / 1e6:6.2f} Mpx  {name:24s} {rec['seconds']:8.1f} s  "
              f"{rec['px_per_s']:9.0f} px/s  {rec['peak_rss_mb']:7.0f} MB ({rec['peak_anon_mb']:.0f} anon)", flush=True)  # fmt: skip
    out["bytes_per_px"] = {
        "cube": size_of(cube) / n,
        "features": size_of(cache) / n,
        "export": size_of(folder / "export") / n,
        "model": size_of(model) / n,
        "maps": size_of(folder / "maps") / n,
    }
    cached, tiles, dask = (
        np.load(next((folder / d).glob("*_classes.npy")))
        for d in ("maps", "maps_tiles", "maps_dask")
    )
    out["dask_equal"] = bool(np.array_equal(tiles, dask))
    # the cache stitches each stage map across tiles; a streamed tile uses its own maps, so the
    # two differ where a pixel's window crosses a seam
    out["cache_agreement"] = float((cached == tiles).mean())
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| scene | step | seconds | px/s | peak RSS (MB) | of it anonymous (MB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        for name, s in r["steps"].items():
            lines.append(
                f"| {r['megapixels']:.2f} Mpx | {name} | {s['seconds']:.1f} | "
                f"{s['px_per_s']:,.0f} | {s['peak_rss_mb']:,.0f} | {s['peak_anon_mb']:,.0f} |"
            )
    lines += [
        "",
        "| scene | cube B/px | feature cache B/px | `extract` export B/px | maps B/px | "
        "streamed map: dask = one process | cache map = streamed map |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        b = r["bytes_per_px"]
        lines.append(
            f"| {r['megapixels']:.2f} Mpx | {b['cube']:,.0f} | {b['features']:,.0f} | "
            f"{b['export']:,.0f} | {b['maps']:,.1f} | {'yes' if r['dask_equal'] else '**no**'} "
            f"| {100 * r['cache_agreement']:.2f} % of pixels |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mpx = [r["megapixels"] for r in results]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in STEPS:
        if all(name in r["steps"] for r in results):
            a.plot(mpx, [r["steps"][name]["seconds"] for r in results], "o-", label=name)
            b.plot(mpx, [r["steps"][name]["peak_anon_mb"] for r in results], "o-", label=name)
    for ax, what in ((a, "seconds"), (b, "peak anonymous memory (MB)")):
        ax.set_xscale("log")
        ax.set_xticks(mpx, [f"{m:.2g}" for m in mpx])
        ax.minorticks_off()
        ax.set_xlabel("scene size (megapixels)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    a.set_yscale("log")
    b.set_ylim(bottom=0)
    a.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def write_docs(data: dict) -> None:
    """Replace the "Scale" section of docs/benchmarks.md (from its marker to the next ``## ``)."""
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text()
    sizes = " ".join(f"{m:g}" for m in data["sizes"])
    section = (
        f"{MARK}\n## Scale: cost against scene size\n\n"
        "Synthetic int16 scenes of 64 bands (fields of ten materials), `tiny` preset "
        f"({data['pretrain_steps']} pretraining steps), features at timesteps "
        f"{data['spec']['timesteps']} with {data['spec']['noise_draws']} noise draw(s), "
        f"`--method {data['method']}` on 120 labelled pixels (12 per material); every step is the command line in its own process; "
        "memory is the peak over its process tree (dask workers included), resident and, of "
        "that, anonymous: the resident figure also counts pages of the memory-mapped cube, "
        "cache and maps, which the kernel reclaims when memory runs short. "
        f"Machine: {data['machine']}.\n\n"
        "    .venv/bin/python benchmarks/scale.py --workdir /tmp/scale "
        f"--sizes {sizes} "
        "--json benchmarks/results/scale.json\n\n"
        f"{table(data['results'])}\n\n![time and memory against scene size](images/scale.png)\n\n"
    )
    if MARK in text:
        start = text.index(MARK)
        nxt = re.search(r"^## ", text[start + len(MARK) + 5 :], re.M)
        end = len(text) if nxt is None else start + len(MARK) + 5 + nxt.start()
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="scenes, models, caches and maps go here (removed after)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--from-json", help="only rebuild the table, plot and docs from this file")
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1, 4, 16],
                    help="scene sizes in megapixels")  # fmt: skip
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument(
        "--timesteps",
        default="100,500,900",
        help="feature timesteps (fewer than "
        "the default 19 keep the 16 Mpx scene within an hour on 2 cores)",
    )
    ap.add_argument("--noise-draws", type=int, default=1)
    ap.add_argument("--method", default="auto", choices=("auto", "paper", "few-label"))
    ap.add_argument("--keep", action="store_true", help="keep each scene's files")
    a = ap.parse_args(argv)
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
    else:
        if not a.workdir:
            ap.error("--workdir is needed to run the benchmark")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        results = []
        for mpx in a.sizes:
            folder = Path(a.workdir) / f"{mpx:g}Mpx"
            results.append(run_scene(folder, mpx, a, env))
            if not a.keep:
                shutil.rmtree(folder, ignore_errors=True)
        data = {
            "machine": f"{os.cpu_count()} CPU cores",
            "sizes": a.sizes,
            "pretrain_steps": a.pretrain_steps,
            "spec": {"timesteps": a.timesteps, "noise_draws": a.noise_draws},
            "method": a.method,
            "results": results,
        }
        if a.json:
            tmp = Path(a.json + ".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, a.json)
    print(table(data["results"]))
    plot(data["results"], ROOT / "docs" / "images" / "scale.png")
    write_docs(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
