"""MTMSD against a linear probe, an RBF-SVM and a random forest on Indian Pines; writes
docs/benchmarks.md.

Protocols: the paper's random stratified 10 % split (several seeds: mean and std) and a spatially
disjoint ``blocks:K`` split. Every method sees the same split and is scored on test pixels only.
The diffusion model is pretrained once, without labels (pretraining never sees a split), and its
features are computed once; each split then trains the heads from scratch with its seed.

    .venv/bin/python benchmarks/accuracy.py --json out/accuracy.json
    .venv/bin/python benchmarks/accuracy.py --model mtmsd-demo/classifier/model   # reuse a model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mtmsd._progress import run
from napari_mtmsd.evaluation import iter_evaluate
from napari_mtmsd.features import FeatureSpec
from napari_mtmsd.model import DiffusionModel
from napari_mtmsd.pretrain import pretrain
from napari_mtmsd.samples import load_indian_pines

METHODS = {"mtmsd": "MTMSD (cpu preset)", "linear": "linear probe, purified features",
           "svm": "RBF-SVM, 30 PCA of spectra", "rf": "random forest, spectra"}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]
FEW_LABELS_MARK = "<!-- few-labels -->"


def one(cube, gt, model, split: str, seed: int, cache: str) -> dict:
    rep = run(iter_evaluate(cube, gt.data, split=split, seed=seed, model=model, device="cpu",
                            cache_dir=cache, class_names=gt.class_names))
    out = {"mtmsd": {k: rep[k] for k in ("oa", "aa", "kappa")} | {
        "time_s": rep["timings_s"]["train"] + rep["timings_s"]["predict"]}}
    for name, r in rep["baselines"].items():
        out[name] = {k: r[k] for k in ("oa", "aa", "kappa", "time_s")}
    out["n_train"], out["n_test"] = rep["n_train"], rep["n_test"]
    out["split_sha1"] = hashlib.sha1(np.packbits(rep["train_mask"]).tobytes()).hexdigest()[:12]
    out["features_s"] = rep["timings_s"]["features"]
    return out


def summarise(runs: list[dict]) -> dict:
    s = {}
    for m in METHODS:
        s[m] = {k: (float(np.mean([r[m][k] for r in runs])), float(np.std([r[m][k] for r in runs])))
                for k in ("oa", "aa", "kappa", "time_s")}
    return s


def table(summary: dict, n_runs: int) -> str:
    pm = (lambda v: f"{v[0]:.2f} ± {v[1]:.2f}") if n_runs > 1 else (lambda v: f"{v[0]:.2f}")
    lines = ["| method | OA | AA | kappa | train + predict (s) |", "|---|---|---|---|---|"]
    for m, name in METHODS.items():
        r = summary[m]
        lines.append(f"| {name} | {pm(r['oa'])} | {pm(r['aa'])} | {pm(r['kappa'])} | "
                     f"{r['time_s'][0]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="pretrained model directory (default: pretrain the cpu preset)")
    ap.add_argument("--model-note", help="how that model was made, for the page")
    ap.add_argument("--seeds", default="827,1,2")
    ap.add_argument("--blocks", default="blocks:4")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--from-json", help="only render the page from results saved with --json")
    ap.add_argument("--md", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--other-pretraining", nargs="+", default=[],
                    help="results (--json) of the same protocol on models pretrained otherwise "
                    "(another seed, thread count or load), shown beside this run's")  # fmt: skip
    a = ap.parse_args()
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())
    else:
        results = measure(a)
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(results, indent=1))
    others = [json.loads(Path(p).read_text()) for p in a.other_pretraining]
    md = Path(a.md)  # the few-label section (benchmarks/few_labels.py) is kept as it is
    tail = md.read_text().partition(FEW_LABELS_MARK)[1:] if md.exists() else ("", "")
    md.write_text(render(results, others) + ("\n" + "".join(tail) if tail[0] else ""))
    print(f"-> {a.md}")


def measure(a: argparse.Namespace) -> dict:
    cube, gt = load_indian_pines()
    t0 = time.perf_counter()
    if a.model:
        model = DiffusionModel.load(a.model)
        made = a.model_note or f"loaded from {a.model}"
    else:
        model = pretrain(cube, preset="cpu", seed=0)
        made = f"pretrained in this run, seed 0, {time.perf_counter() - t0:.0f} s"
    seeds = [int(s) for s in a.seeds.split(",")]
    results: dict = {"model": made, "pretrain_steps": model.config.get("step"),
                     "device": f"cpu, {torch.get_num_threads()} threads", "seeds": seeds,
                     "blocks_spec": a.blocks, "date": time.strftime("%Y-%m-%d"),
                     "noise_draws": FeatureSpec().noise_draws,
                     "random": [], "blocks": []}
    with tempfile.TemporaryDirectory() as cache:
        for seed in seeds:
            r = one(cube, gt, model, "random:0.1", seed, cache)
            results["random"].append({"seed": seed, **r})
            print(f"random:0.1 seed {seed}: " + ", ".join(
                f"{m} {r[m]['oa']:.2f}" for m in METHODS), flush=True)
        for seed in seeds:  # each seed holds out other blocks
            r = one(cube, gt, model, a.blocks, seed, cache)
            results["blocks"].append({"seed": seed, **r})
            print(f"{a.blocks} seed {seed}: " + ", ".join(
                f"{m} {r[m]['oa']:.2f}" for m in METHODS), flush=True)
    results["summary_random"] = summarise(results["random"])
    results["summary_blocks"] = summarise(results["blocks"])
    return results


def pretraining_section(results: dict, others: list[dict]) -> str:
    """The same protocol on models pretrained otherwise: how much the (label-free) pretraining
    moves the scores."""
    if not others:
        return ""
    rows = []
    for name, r in (("this page's model", results), *(("other pretraining", o) for o in others)):
        m = r["summary_random"]["mtmsd"]
        per_seed = ", ".join(f"{x['mtmsd']['oa']:.2f}" for x in r["random"])
        rows.append(f"| {name}: {r['model']} | {m['oa'][0]:.2f} ± {m['oa'][1]:.2f} "
                    f"({per_seed}) | {m['aa'][0]:.2f} | {m['kappa'][0]:.2f} | "
                    f"{r['summary_blocks']['mtmsd']['oa'][0]:.2f} |")  # fmt: skip
    return """
## Pretraining

Pretraining sees no labels, so the protocol above pretrains once; its seed (and the CPU thread
count, which changes the order of floating-point sums: docs/pretraining.md) is a source of
variance of its own. The same protocol (same splits, seeds and classifier) on `cpu`-preset
models pretrained otherwise:

| diffusion model | random 10 %: OA (per seed) | AA | kappa | `blocks` OA (mean) |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


def other_note(others: list[dict]) -> str:
    if not others:
        return ""
    oas = [o["summary_random"]["mtmsd"]["oa"] for o in others]
    listed = ", ".join(f"{m[0]:.2f} ± {m[1]:.2f}" for m in oas)
    met = sum(m[0] >= 98.0 for m in oas)
    return (f" The {len(oas)} other pretrained model(s) of the section above score {listed}\n"
            f"  ({met} of {len(oas)} at or above 98.0).")  # fmt: skip


def render(results: dict, others: list[dict] | None = None) -> str:
    others = others or []
    rnd, blk = results["random"], results["blocks"]
    mt = results["summary_random"]["mtmsd"]
    svm_r = results["summary_random"]["svm"]["oa"][0]
    svm_b = results["summary_blocks"]["svm"]["oa"][0]
    mt_b = results["summary_blocks"]["mtmsd"]["oa"][0]
    ahead = [mt["oa"][0] > svm_r, mt_b > svm_b]
    vs_svm = ", ".join(f"{'ahead' if a else 'behind'} on the {split} split"
                       for a, split in zip(ahead, ("random", "disjoint"), strict=True))  # fmt: skip
    above = [(METHODS[m], results["summary_blocks"][m]["oa"][0]) for m in METHODS
             if m != "mtmsd" and results["summary_blocks"][m]["oa"][0] > mt_b]  # fmt: skip
    others_b = ", ".join(f"{o['summary_blocks']['mtmsd']['oa'][0]:.2f}" for o in others)
    disjoint = (f"- On the disjoint split MTMSD scores {mt_b:.2f} with this model"
                + (f" and {others_b} with the others (section above)" if others else "")
                + ("; " + ", ".join(f"{n} ({v:.2f})" for n, v in above) + " scores higher here"
                   if above else "") + ".\n")  # fmt: skip
    split_sizes = ", ".join(f"{b['seed']}: {b['n_train']} / {b['n_test']}" for b in blk)
    if len({b.get("split_sha1") for b in blk}) == 1 and len(blk) > 1:
        split_sizes += ("; the seeded rule leaves one choice of blocks on this scene, so the seeds "
                        "vary the classifiers' initialisation only")  # fmt: skip
    blk_per_seed = ", ".join(f"{b['seed']}: {b['mtmsd']['oa']:.2f} vs {b['svm']['oa']:.2f}"
                             for b in blk)  # fmt: skip
    verdict = "meets" if mt["oa"][0] >= 98.0 else "does not yet meet"
    gap = mt["oa"][0] - 97.96
    versus = (f"Ahead on OA by {gap:.2f}, within SSFTT's spread" if gap > 0.005 else
              "Level on OA within SSFTT's spread" if gap > -0.005 else
              f"Behind on OA by {-gap:.2f}, within SSFTT's spread")  # fmt: skip
    draws = results.get("noise_draws", 1)
    noise = "one noise draw" if draws == 1 else f"mean of {draws} noise draws: docs/features.md"
    return f"""# Benchmarks: accuracy on Indian Pines

Written by `benchmarks/accuracy.py` ({results['date']}); reproduce with

```bash
.venv/bin/napari-mtmsd demo -o mtmsd-demo        # pretrains the cpu-preset model (and scores seed 827)
.venv/bin/python benchmarks/accuracy.py --model mtmsd-demo/classifier/model --json out/accuracy.json
```

(without `--model` the script pretrains its own model first; `--from-json
benchmarks/results/accuracy.json --other-pretraining benchmarks/results/accuracy_pretrain_*.json`
renders this page with the pretraining table). Indian Pines (145 x 145 x 200,
16 classes, 10,249 labelled pixels, from the `tensorly` package). One `cpu`-preset diffusion model
({results['pretrain_steps']} steps, no labels; {results['model']}); dense features (19 timesteps x
stages 0, 1, 2, 3, 5, {noise}) computed once ({rnd[0]['features_s']:.0f} s for the whole scene, then
cached); then, per split, every method trained from scratch with the split's seed and scored on
the **test pixels only**. Machine: this project's 2-core CPU ({results['device']}), shared with
other jobs during the run, so times are upper bounds.

## Random stratified 10 % split (the paper's protocol)

Seeds {', '.join(str(s) for s in results['seeds'])}: {rnd[0]['n_train']} training and
{rnd[0]['n_test']} test pixels each; mean ± std over the seeds (x100).

{table(results['summary_random'], len(rnd))}

Per seed, MTMSD OA: {', '.join(f"{r['seed']}: {r['mtmsd']['oa']:.2f}" for r in rnd)}.

## Spatially disjoint split (`{results['blocks_spec']}`)

The scene cut into a grid of blocks, whole blocks held out for testing (training / test pixels
by seed: {split_sizes}). No test pixel's neighbourhood overlaps a training pixel's
block, so this measures generalisation to unseen places rather than interpolation between
neighbouring pixels. Some classes lie in a single block and cannot appear on both sides, which
caps every method's score.

{table(results['summary_blocks'], len(blk))}

Per seed, MTMSD vs SVM OA: {blk_per_seed}.
{pretraining_section(results, others)}
## Where we stand

- **Target** (OA >= 98.0, mean of 3 seeds, `cpu` preset): this run {verdict} it, at
  {mt['oa'][0]:.2f} ± {mt['oa'][1]:.2f}.{other_note(others)}
- Against **SSFTT** (Sun et al. 2022), the peer to beat: its official code, run on this very
  machine with the same protocol (2 CPU cores, seeds 827/1/2), scored OA 97.96 ± 0.75, AA 97.48,
  kappa 97.67, with about a minute of training per run. MTMSD here: OA {mt['oa'][0]:.2f} ±
  {mt['oa'][1]:.2f}, AA {mt['aa'][0]:.2f}, kappa {mt['kappa'][0]:.2f}, with
  {mt['time_s'][0]:.0f} s of training and prediction per run, after the one-off pretraining and
  {rnd[0]['features_s']:.0f} s of features. {versus}; behind on AA (the
  smallest classes, Alfalfa and Oats, with 5 and 2 training pixels).
- Against the **RBF-SVM** on 30 PCA components of the spectra (reference OA 77.66 at seed 827):
  MTMSD is {vs_svm} ({mt['oa'][0]:.2f} vs {svm_r:.2f} random,
  {mt_b:.2f} vs {svm_b:.2f} disjoint, means over the seeds).
{disjoint}- The `paper` preset needs a GPU to pretrain in reasonable time; no GPU was lent to the session
  that made these figures, so only the `cpu` preset is reported.
"""


if __name__ == "__main__":
    main()
