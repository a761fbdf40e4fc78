"""Few labels on Indian Pines: the honest protocols, an ablation of each few-label step, the
baselines, and a simulated user who paints where the plugin suggests against one who paints at
random. Writes the "Few labels" section of docs/benchmarks.md.

Protocols: ``per-class:5``, ``per-class:10``, ``per-class:20`` (5 seeds), ``random:0.1`` and
``blocks:4`` (3 seeds); every method sees the same split and is scored on its test pixels only.
The diffusion model is pretrained once without labels; features (and the scene embedding) are
computed once and shared by every split.

    .venv/bin/napari-mtmsd pretrain sample:indian_pines -o model --seed 0
    .venv/bin/python benchmarks/few_labels.py --model model --json benchmarks/results/few_labels.json
    .venv/bin/python benchmarks/few_labels.py --from-json benchmarks/results/few_labels.json
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_mtmsd import baselines as bl
from napari_mtmsd._progress import run
from napari_mtmsd.classifier import MTMSDClassifier
from napari_mtmsd.embedding import FeatureEmbedding
from napari_mtmsd.fewlabel import SceneVectors, SpatialSVM, classify, maps_of
from napari_mtmsd.metrics import scores
from napari_mtmsd.model import DiffusionModel
from napari_mtmsd.pipeline import (
    default_k,
    iter_features,
    iter_predict,
    iter_train,
    labelled_pixels,
)
from napari_mtmsd.samples import load_indian_pines
from napari_mtmsd.spatial import random_walker, regularise
from napari_mtmsd.splits import make_split
from napari_mtmsd.suggest import suggest

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = {
    "per-class:5": 5,
    "per-class:10": 5,
    "per-class:20": 5,
    "random:0.1": 3,
    "blocks:4": 3,
}
SEEDS = (827, 1, 2, 3, 4)
METHODS = {
    "paper": "MTMSD as the paper (purification, fusion ensemble)",
    "paper+reg": "+ map regularisation (guided filter)",
    "emb": "embedding + RBF-SVM (no spatial step)",
    "emb+smooth": "+ edge-aware smoothing of the vectors",
    "emb+smooth+reg": "+ map regularisation (guided filter)",
    "spec+gf": "+ the model's spectral components beside (the few-label head until 2026-12-03)",
    "spec+view+gf": "+ a second SVM on the spectral components, averaged in at half weight",
    "spec+view+rw": "+ the random walker in place of the guided filter (no pixel held)",
    "fewlabel": "+ the painted pixels held by the random walker (**few-label MTMSD**)",
    "quick": "quick map: the same on spectra only (no diffusion)",
    "linear": "linear probe, purified features",
    "svm": "RBF-SVM, 30 PCA of spectra (CV)",
    "rf": "random forest, spectra",
}
MARK = "<!-- few-labels -->"


def score(class_map: np.ndarray, gt: np.ndarray, test: np.ndarray, labels: list[int]) -> dict:
    coords, y = labelled_pixels(np.where(test, gt, 0))
    r = scores(y, class_map[coords[:, 0], coords[:, 1]], labels=labels)
    return {k: r[k] for k in ("oa", "aa", "kappa")}


class Scene:
    """Everything computed once: features, the embedding, the vectors of each few-label variant."""

    def __init__(self, model: DiffusionModel, cache: str):
        self.cube, gt = load_indian_pines()
        self.gt = np.asarray(gt.data)
        self.labels = sorted(int(v) for v in np.unique(self.gt[self.gt > 0]))
        self.model = model
        t0 = time.perf_counter()
        self.store = run(iter_features(model, self.cube, cache_dir=cache, device="cpu"))
        t1 = time.perf_counter()
        embedding = FeatureEmbedding.fit(self.store)
        self.full = SceneVectors.of_features(model, self.cube, self.store, embedding)
        self.timings = {"features_s": t1 - t0, "embedding_s": time.perf_counter() - t1}
        n_spec = model.preprocessor.n_components
        self.emb = SceneVectors(self.full.vectors[..., n_spec:], self.full.guide, self.full.valid)
        t0 = time.perf_counter()
        self.spectral = SceneVectors.of_spectra(self.cube)
        self.timings["spectral_vectors_s"] = time.perf_counter() - t0

    def map_of(self, classes: np.ndarray, proba: np.ndarray) -> np.ndarray:
        return np.where(self.cube.valid_mask(), classes[proba.argmax(-1)], 0)


def run_split(scene: Scene, split: str, seed: int) -> dict:
    gt, cube = scene.gt, scene.cube
    train, test = make_split(gt, split, seed=seed)
    lab = np.where(train, gt, 0)
    out, times = {}, {}

    def done(name: str, class_map: np.ndarray, t0: float) -> None:
        times[name] = time.perf_counter() - t0
        out[name] = score(class_map, gt, test, scene.labels) | {"time_s": round(times[name], 2)}

    coords, y = labelled_pixels(lab)
    t0 = time.perf_counter()
    xc, xg = scene.store.pixels(coords)
    clf = MTMSDClassifier(k=default_k(xc.shape[-1]), seed=seed).fit(xc, xg, y)
    H, W = gt.shape
    proba = np.zeros((H * W, len(clf.classes_)), np.float32)
    for idx, c, g in scene.store.chunks(8192):
        proba[idx] = clf.predict_proba(c, g)
    proba = proba.reshape(H, W, -1)
    done("paper", scene.map_of(clf.classes_, proba), t0)
    t1 = time.perf_counter()
    done("paper+reg", scene.map_of(clf.classes_, regularise(proba, scene.full.guide)), t1)
    out["paper+reg"]["time_s"] = round(times["paper"] + times["paper+reg"], 2)

    few_label_rows(scene, lab, done)

    test_coords, y_test = labelled_pixels(np.where(test, gt, 0))
    t0 = time.perf_counter()
    probe = bl.LinearProbe(k=default_k(xc.shape[-1]), seed=seed).fit(xc, xg, y)
    pred = probe.predict(*scene.store.pixels(test_coords))
    out["linear"] = _scored(y_test, pred, scene.labels, t0)
    spectra = np.asarray(cube.data, np.float32)
    for name, cls in (("svm", bl.SpectralSVM), ("rf", bl.SpectralRandomForest)):
        t0 = time.perf_counter()
        model = cls(seed=seed).fit(spectra[coords[:, 0], coords[:, 1]], y)
        pred = model.predict(spectra[test_coords[:, 0], test_coords[:, 1]])
        out[name] = _scored(y_test, pred, scene.labels, t0)
    out["n_train"], out["n_test"] = int(train.sum()), int(test.sum())
    return out


def few_label_rows(scene: Scene, lab: np.ndarray, done: Any) -> None:
    """The few-label ablation: each row adds one step of ``fewlabel``'s recipe; the last two
    rows are the product's own ``fewlabel.classify`` (MTMSD, and the quick map)."""
    H, W = lab.shape
    valid = scene.cube.valid_mask()
    t0 = time.perf_counter()
    head = SpatialSVM().fit(scene.emb.vectors, lab)
    rows = head.predict_proba_rows(scene.emb.vectors.reshape(H * W, -1)).reshape(H, W, -1)
    done("emb", scene.map_of(head.classes_, rows), t0)
    n_spec = scene.model.preprocessor.n_components
    finishes = {"gf": lambda p, v: regularise(p, v.guide),
                "rw": lambda p, v: random_walker(p, v.guide, None, valid)}  # fmt: skip
    for name, vectors, n, finish in (("emb+smooth", scene.emb, 0, None),
                                     ("emb+smooth+reg", scene.emb, 0, "gf"),
                                     ("spec+gf", scene.full, 0, "gf"),
                                     ("spec+view+gf", scene.full, n_spec, "gf"),
                                     ("spec+view+rw", scene.full, n_spec, "rw")):  # fmt: skip
        t0 = time.perf_counter()
        head = SpatialSVM(n_spectral=n)
        smoothed = head.smooth(vectors.vectors, vectors.guide)
        p = head.fit(smoothed, lab).predict_proba_rows(smoothed.reshape(H * W, -1))
        p = p.reshape(H, W, -1)
        done(name, scene.map_of(head.classes_, finishes[finish](p, vectors) if finish else p), t0)
    for name, vectors in (("fewlabel", scene.full), ("quick", scene.spectral)):
        t0 = time.perf_counter()
        head, p = classify(vectors, lab)
        done(name, scene.map_of(head.classes_, p), t0)


def _scored(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int], t0: float) -> dict:
    r = scores(y_true, y_pred, labels=labels)
    return {k: r[k] for k in ("oa", "aa", "kappa")} | {
        "time_s": round(time.perf_counter() - t0, 2)
    }


def simulated_users(scene: Scene, rounds: int, per_round: int, seeds: tuple[int, ...]) -> dict:
    """Start from ``per-class:5``; each round one user paints a 3 x 3 patch at each of the first
    ``per_round`` suggested places that hold ground truth (Indian Pines leaves roads and
    buildings unlabelled: a user there would paint a class of their own), the other at as many
    random labelled places; OA of the few-label map on every labelled pixel the user has not
    painted, after each round."""
    gt, valid = scene.gt, scene.cube.valid_mask()
    curves: dict[str, list[list[float]]] = {"suggested": [], "random": []}
    for seed in seeds:
        start = np.where(make_split(gt, "per-class:5", seed=seed)[0], gt, 0)
        for user in curves:
            rng, lab, curve = np.random.default_rng(seed), start.copy(), []
            for r in range(rounds + 1):
                head, proba = classify(scene.full, lab)
                class_map, confidence = maps_of(head.classes_, proba, valid)
                curve.append(score(class_map, gt, (gt > 0) & (lab == 0), scene.labels)["oa"])
                if r == rounds:
                    break
                if user == "suggested":  # a place with no ground truth is skipped, as
                    # a user would skip a place they cannot name: the next one is taken
                    # what the panel suggests (update.iter_fit_and_map)
                    places, _ = suggest(1.0 - confidence, lab, valid, n=20 * per_round)
                    places = [p for p in places if _nameable(gt, *p)][:per_round]
                else:
                    places = np.argwhere((gt > 0) & (lab == 0))
                    places = places[rng.choice(len(places), per_round, replace=False)]
                for i, j in places:
                    patch = (slice(max(i - 1, 0), i + 2), slice(max(j - 1, 0), j + 2))
                    lab[patch] = np.where(gt[patch] > 0, gt[patch], lab[patch])
            curves[user].append(curve)
    return {u: np.mean(c, axis=0).round(2).tolist() for u, c in curves.items()}


def time_pipeline(scene: Scene, split: str = "per-class:10", seed: int = 827) -> dict:
    """Seconds of one run through the product's path (``pipeline.iter_train`` then
    ``iter_predict``, features cached, the embedding fitted inside), the second in the process,
    and of an Update (the embedded scene kept in ``reuse``)."""
    lab = np.where(make_split(scene.gt, split, seed=seed)[0], scene.gt, 0)
    out = {}
    for name in ("first_run_s", "run_s"):
        t0 = time.perf_counter()
        bundle = run(iter_train(scene.model, scene.cube, lab, store=scene.store, device="cpu"))
        run(iter_predict(bundle, scene.cube, "cpu", store=scene.store))
        out[name] = round(time.perf_counter() - t0, 2)
    reuse: dict = {}
    for name in ("train_and_map_s", "update_s"):
        t0 = time.perf_counter()
        bundle = run(iter_train(scene.model, scene.cube, lab, store=scene.store, device="cpu",
                                reuse=reuse))  # fmt: skip
        run(iter_predict(bundle, scene.cube, "cpu", store=scene.store, reuse=reuse))
        out[name] = round(time.perf_counter() - t0, 2)
    return out


def _nameable(gt: np.ndarray, i: int, j: int) -> bool:
    """Whether the 3 x 3 patch at (i, j) holds a ground-truth label to paint."""
    return bool((gt[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] > 0).any())


def render(results: dict) -> str:
    lines = [MARK, "", "## Few labels", "", _intro(results), "",
             "| method | " + " | ".join(PROTOCOLS) + " |",
             "|---|" + "---|" * len(PROTOCOLS)]  # fmt: skip
    for m, name in METHODS.items():
        cells = []
        for p in PROTOCOLS:
            oa = [r[m]["oa"] for r in results["runs"][p]]
            cells.append(f"{np.mean(oa):.2f} ± {np.std(oa):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    t = results["timings"]
    pc10 = results["runs"]["per-class:10"]
    few = np.mean([r["fewlabel"]["time_s"] for r in pc10])
    lines += ["", "OA x100, mean ± std over the seeds, test pixels only. Rows 3-9 add one step "
              "each; the few-label MTMSD row is what `--method auto` runs with fewer than "
              "30 labelled pixels per class (median), the paper's row above that.", "",
              f"Time for one `per-class:10` run with features cached: the scene embedding "
              f"{t['embedding_s']:.1f} s (once per feature store) + the few-label head "
              f"{few:.1f} s; the paper's training and prediction "
              f"{np.mean([r['paper']['time_s'] for r in pc10]):.1f} s. Features "
              f"{t['features_s']:.1f} s (0 when cached); the quick map's spectral vectors "
              f"{t['spectral_vectors_s']:.1f} s."]  # fmt: skip
    p = results.get("pipeline_timing")
    if p:
        lines += ["", f"Through the product's path (`pipeline.iter_train` + `iter_predict`, "
                  f"features cached, `--redo-timing` on an idle machine): one `per-class:10` run "
                  f"of the few-label method, its embedding included, {p['run_s']:.1f} s "
                  f"({p['first_run_s']:.1f} s the first in a process); an Update with the "
                  f"embedded scene kept {p['update_s']:.2f} s."]  # fmt: skip
    if results.get("idle_note"):
        lines += ["", results["idle_note"]]
    users = results.get("users")
    if users:
        rounds = range(len(users["suggested"]))
        lines += ["", f"### Where to paint next (simulated users, {results['users_note']})", "",
                  "| round | " + " | ".join(str(r) for r in rounds) + " |",
                  "|---|" + "---|" * len(rounds),
                  "| paints the suggested places | " + " | ".join(f"{v:.2f}" for v in users["suggested"]) + " |",
                  "| paints random places | " + " | ".join(f"{v:.2f}" for v in users["random"]) + " |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _intro(results: dict) -> str:
    redone = results.get("few_label_date")
    again = (
        f" The few-label rows (3-9 and the quick map) were measured again on {redone}, same "
        "model and splits: `.venv/bin/python benchmarks/few_labels.py --from-json "
        "benchmarks/results/few_labels.json --model model --redo-few-label`."
        if redone
        else ""
    )
    return (
        f"Written by `benchmarks/few_labels.py` ({results['date']}); reproduce with "
        "`.venv/bin/napari-mtmsd pretrain sample:indian_pines -o model --seed 0` (the recipe "
        "`napari-mtmsd demo` pretrains with) and `.venv/bin/python benchmarks/few_labels.py "
        "--model model --json benchmarks/results/few_labels.json`. Model: "
        f"{results['model']}; Indian Pines; {results['machine']}.{again}"
    )


SCALE_MARK = "<!-- scale -->"  # benchmarks/scale.py's section follows this one


def write_section(md: Path, section: str) -> None:
    """Replace the page's few-label section (from ``MARK`` to the scale section) or append it."""
    text = md.read_text() if md.exists() else ""
    head = text.split(MARK)[0].rstrip("\n")
    tail = text.partition(SCALE_MARK)[1:]
    body = (head + "\n\n" if head else "") + section
    md.write_text(body.rstrip("\n") + "\n\n" + "".join(tail) if tail[0] else body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="pretrained model directory")
    ap.add_argument("--cache-dir", help="feature cache (default: a temporary one)")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--rounds", type=int, default=5, help="simulated-user rounds (0: none)")
    ap.add_argument("--per-round", type=int, default=10, help="places painted per round")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--from-json", help="only render the section from saved results")
    ap.add_argument(
        "--redo-users",
        action="store_true",
        help="with --from-json and --model: measure the simulated users again",
    )
    ap.add_argument(
        "--redo-few-label",
        action="store_true",
        help="with --from-json and --model: the few-label rows again, every split",
    )
    ap.add_argument("--redo-timing", action="store_true",
                    help="with --from-json and --model: time the product's path again (idle!)")  # fmt: skip
    ap.add_argument("--md", default=str(ROOT / "docs" / "benchmarks.md"))
    a = ap.parse_args()
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())
        if a.redo_users or a.redo_timing or a.redo_few_label:
            with tempfile.TemporaryDirectory() as tmp:
                scene = Scene(DiffusionModel.load(a.model), a.cache_dir or tmp)
                if a.redo_few_label:
                    redo_few_label(scene, results)
                if a.redo_timing:
                    results["pipeline_timing"] = time_pipeline(scene)
                if a.redo_users:
                    results["users"] = simulated_users(scene, a.rounds, a.per_round, SEEDS)
            Path(a.json or a.from_json).write_text(json.dumps(results, indent=1))
    else:
        if not a.model:
            ap.error("--model is required (napari-mtmsd demo makes one)")
        results = measure(a)
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))
    section = render(results)
    print(section)
    if set(results["runs"]) == set(PROTOCOLS):
        write_section(Path(a.md), section)


def redo_few_label(scene: Scene, results: dict) -> None:
    """Measure the few-label rows of every saved split again (the other rows do not depend on
    the few-label head); the date of the rows is recorded."""
    for p, runs in results["runs"].items():
        for r in runs:
            train, test = make_split(scene.gt, p, seed=r["seed"])
            lab = np.where(train, scene.gt, 0)

            def done(name: str, class_map: np.ndarray, t0: float, r: dict = r, test=test) -> None:
                t = round(time.perf_counter() - t0, 2)
                r[name] = score(class_map, scene.gt, test, scene.labels) | {"time_s": t}

            few_label_rows(scene, lab, done)
            print(p, r["seed"], f"fewlabel {r['fewlabel']['oa']:.2f}", flush=True)
    results["few_label_date"] = time.strftime("%Y-%m-%d")


def measure(a: argparse.Namespace) -> dict:
    model = DiffusionModel.load(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        scene = Scene(model, a.cache_dir or tmp)
        runs: dict[str, list] = {}
        for p in re.split(r"\s*,\s*", a.protocols):
            runs[p] = []
            for seed in SEEDS[: PROTOCOLS[p]]:
                runs[p].append(run_split(scene, p, seed) | {"seed": seed})
                r = runs[p][-1]
                print(p, seed, "  ".join(f"{m} {r[m]['oa']:.2f}" for m in METHODS), flush=True)
        users = simulated_users(scene, a.rounds, a.per_round, SEEDS) if a.rounds else None
    cfg = model.config
    return {
        "date": time.strftime("%Y-%m-%d"),
        "model": f"{cfg.get('preset')} preset, {cfg.get('step')} steps, seed {cfg.get('seed')}",
        "machine": "this project's 2-core CPU",
        "timings": scene.timings,
        "runs": runs,
        "users": users,
        "users_note": f"start per-class:5, +{a.per_round} places of 3 x 3 pixels per round "
        "(suggested places without ground truth skipped), mean of "
        f"{len(SEEDS)} seeds, OA on every labelled pixel not painted",
    }


if __name__ == "__main__":
    main()
