"""Retraining on a shifted site with reviewed labels, through medres's command line.

PneumoniaMNIST (28 px) is cut into two halves, each image its own patient (MedMNIST has
no patient ids): every official split is halved at random, stratified by label. Site A
keeps its pixels. Site B gets a documented acquisition shift, as a different scanner
would give: contrast halved around each image's mean, then Gaussian noise of sd 30 grey
levels (of 255), rounded and clipped to 8 bits. 5 % of site B's training labels are
flipped (the noisy labels a new site sends).

Steps, each a ``medres`` command:

1. champion ``v1``: ``medres train --cohort site_a`` (``--epochs 15``, otherwise the
   defaults);
2. ``medres label-issues v1 site_b_noisy --epochs 5`` ranks site B's training scans
   (4-fold out-of-fold probabilities, 5 epochs per fold): the share of truly flipped
   labels among the top 5 %;
3. a simulated reviewer (who knows the true label) decides the top 10 % in a review
   store (``medres review load --label-issues``), and ``medres review export`` writes
   the reviews CSV;
4. challengers: ``medres retrain v1 --cohort site_b_noisy`` (flipped labels; by default
   site A's cohort is rehearsed), the same with ``--reviews`` (corrected), and with
   ``--new-only`` (site B alone: how much is forgotten without rehearsal);
5. ``medres compare v1 CHALLENGER --cohort site_b_noisy`` (old test set: site A's):
   AUC on both sites' test portions with paired bootstrap CIs;
6. leakage: a cohort that puts a champion test patient into training must be refused.

Results go to ``benchmarks/results/retrain.md``. Finished steps (their output exists
under --work) are not repeated.

Usage::

    python benchmarks/retrain.py [--work /tmp/medres-bench-retrain] [--seeds 0 1 2]

Every challenger is trained once per seed (``--seed``; the champion is seed 0) and the
site-shift figures are given per seed and as their mean.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks.medmnist import machine  # noqa: E402

SHARED = Path(os.environ.get("MEDRES_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
CONTRAST, NOISE_SD, FLIP_SHARE, REVIEW_SHARE, SEED = 0.5, 30.0, 0.05, 0.10, 0
EPOCHS = 15
FOLD_EPOCHS = 5  # out-of-fold models only rank labels
LABELS = {
    "v2_new_only": "site B alone (--new-only), flipped labels",
    "v2_noisy": "sites A + B, flipped labels",
    "v2_reviewed": "sites A + B, reviewed labels",
}


def medres(*args, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "medres", *map(str, args)]
    print("$ medres", " ".join(map(str, args)), flush=True)
    return subprocess.run(command, check=check, text=True, capture_output=not check)


def timed(marker: Path, *args) -> float:
    """Run a medres command unless ``marker`` exists; returns its wall minutes (NaN when
    an earlier invocation ran it without timing)."""
    seconds = marker.with_suffix(".seconds")
    if not marker.exists():
        start = time.perf_counter()
        medres(*args)
        seconds.write_text(f"{time.perf_counter() - start:.1f}")
    return float(seconds.read_text()) / 60 if seconds.exists() else float("nan")


def shifted(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Site B's acquisition: lower contrast around the image mean, added noise (uint8)."""
    x = image.astype(np.float64)
    x = x.mean() + CONTRAST * (x - x.mean()) + rng.normal(0, NOISE_SD, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_sites(work: Path) -> dict:
    """Scan folders and split cohorts of sites A and B (B's train labels 5 % flipped)."""
    done = work / "sites.json"
    if done.exists():
        return json.loads(done.read_text())
    scans = work / "scans"
    if not (scans / "labels.csv").exists():
        medres("datasets", "medmnist", SHARED / "medmnist" / "pneumoniamnist.npz", "-o", scans)
    labels = pd.read_csv(scans / "labels.csv")
    rng = np.random.default_rng(SEED)
    labels["site"] = ""
    for _, group in labels.groupby(["split", "label"]):
        order = rng.permutation(group.index.to_numpy())
        labels.loc[order[: len(order) // 2], "site"] = "A"
        labels.loc[order[len(order) // 2 :], "site"] = "B"
    labels["patient_id"] = [f"{s}{i:05d}" for i, s in enumerate(labels["site"])]
    facts = {}
    for site in ("A", "B"):
        rows = labels[labels["site"] == site].copy()
        folder = work / f"site_{site.lower()}"
        for path in rows["path"]:
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            image = np.asarray(Image.open(scans / path))
            if site == "B":
                image = shifted(image, np.random.default_rng([SEED, int(target.stem[-5:])]))
            Image.fromarray(image).save(target)
        truth = rows[["path", "label", "split", "patient_id"]]
        truth.to_csv(folder / "labels_true.csv", index=False)
        given = truth.copy()
        if site == "B":
            train = given.index[given["split"] == "train"].to_numpy()
            flip = rng.choice(train, size=round(FLIP_SHARE * len(train)), replace=False)
            given.loc[flip, "label"] = 1 - given.loc[flip, "label"]
            facts["flipped"] = sorted(str((folder / p).resolve()) for p in given.loc[flip, "path"])
        given.to_csv(folder / "labels.csv", index=False)
        name = "site_a" if site == "A" else "site_b_noisy"
        medres(
            "ingest",
            folder,
            "--labels",
            folder / "labels.csv",
            "--site",
            site,
            "-o",
            work / f"{name}_all.parquet",
        )
        medres(
            "split",
            work / f"{name}_all.parquet",
            "--keep-column",
            "split",
            "-o",
            work / f"{name}.parquet",
        )
        facts[site] = {
            split: int((rows["split"] == split).sum()) for split in ("train", "val", "test")
        }
    done.write_text(json.dumps(facts, indent=1))
    return facts


def simulated_review(work: Path, issues: Path, share: float) -> Path:
    """A reviewer who knows the truth decides the top ``share`` of the label-issue
    ranking in a review store; their decisions are exported as the reviews CSV."""
    from medres.review import ReviewStore

    reviews = work / "reviews.csv"
    if reviews.exists():
        return reviews
    store_path = work / "review.db"
    store_path.unlink(missing_ok=True)
    ranked = pd.read_csv(issues)
    top = max(1, round(share * len(ranked)))
    medres("review", "load", "--label-issues", issues, "--top", top, "--store", store_path)
    truth = pd.read_csv(work / "site_b" / "labels_true.csv")
    truth["key"] = [str((work / "site_b" / p).resolve()) for p in truth["path"]]
    true_label = dict(zip(truth["key"], truth["label"].astype(str), strict=True))
    store = ReviewStore(store_path)
    for case in store.worklist(status="pending").itertuples():
        label = true_label[str(Path(case.path).resolve())]
        if label == str(case.predicted_class):
            store.decide(case.case_id, "reviewer_sim", "agree")
        else:
            store.decide(case.case_id, "reviewer_sim", "disagree", corrected_label=label)
    store.close()
    medres("review", "export", "--store", store_path, "-o", reviews)
    return reviews


def label_issue_share(issues: Path, flipped: list[str], top_share: float = 0.05) -> dict:
    ranked = pd.read_csv(issues).sort_values("rank")
    top = ranked.head(max(1, round(top_share * len(ranked))))
    hit = top["path"].map(lambda p: str(Path(p).resolve())).isin(set(flipped))
    base = len(flipped) / len(ranked)
    return {
        "top": len(top),
        "flipped_in_top": int(hit.sum()),
        "share": float(hit.mean()),
        "base_rate": base,
        "lift": float(hit.mean()) / base,
    }


def leakage_check(work: Path) -> str:
    """A site B cohort whose first training scan carries a champion test patient's id."""
    from medres.cohort import Cohort

    a_test = Cohort.load(work / "site_a.parquet").labelled("test")
    table = Cohort.load(work / "site_b_noisy.parquet").table.copy()
    first = table.index[table["split"] == "train"][0]
    table.loc[first, "patient_id"] = a_test["patient_id"].iloc[0]
    Cohort(table, {}).save(work / "leaky.parquet")
    result = medres(
        "retrain",
        work / "v1",
        "--cohort",
        work / "leaky.parquet",
        "-o",
        work / "leaky_bundle",
        check=False,
    )
    message = " ".join((result.stdout + result.stderr).split())
    return f"exit {result.returncode}: {message[:400]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-retrain"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "retrain.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    facts = make_sites(work)
    a, b = work / "site_a.parquet", work / "site_b_noisy.parquet"
    timed(
        work / "v1" / "bundle.json", "train", "--cohort", a, "--epochs", EPOCHS, "-o", work / "v1"
    )
    issues = work / "label_issues.csv"
    minutes = {
        "label-issues (4 folds)": timed(
            issues, "label-issues", work / "v1", b, "--epochs", FOLD_EPOCHS, "-o", issues
        )
    }
    lift = label_issue_share(issues, facts["flipped"])
    reviews = simulated_review(work, issues, REVIEW_SHARE)
    challengers = {  # name -> extra retrain arguments
        "v2_new_only": ["--new-only"],
        "v2_noisy": [],
        "v2_reviewed": ["--reviews", reviews],
    }
    reports = {}  # (name, seed) -> compare.json
    training = {"champion": json.loads((work / "v1" / "bundle.json").read_text())["training"]}
    for seed in args.seeds:
        for name, extra in challengers.items():
            run = run_name(name, seed)
            bundle = work / run / "bundle.json"
            retrain = ("retrain", work / "v1", "--cohort", b, *extra, "--seed", seed)
            timed(bundle, *retrain, "-o", work / run)
            training[f"{LABELS[name]}, seed {seed}"] = json.loads(bundle.read_text())["training"]
            out = work / f"compare_{run}"
            compare = ("compare", work / "v1", work / run, "--cohort", b, "-o", out)
            timed(out / "compare.json", *compare)
            reports[name, seed] = json.loads((out / "compare.json").read_text())
    for label, fit in training.items():
        minutes[f"{label} ({fit['epochs_run']} epochs)"] = fit["seconds"] / 60
    leak = leakage_check(work)
    write_markdown(args.out, facts, minutes, lift, reviews, reports, leak, work)
    print(args.out.read_text())


def run_name(name: str, seed: int) -> str:
    """Seed 0 keeps the plain name (the first benchmark runs had one seed)."""
    return name if seed == 0 else f"{name}_s{seed}"


def auroc(report: dict, role: str) -> dict:
    """AUC figures of one test set ("old": site A, "new": site B) of a compare.json."""
    return next(t for t in report["test_sets"] if t["role"] == role)["metrics"]["auroc"]


def write_markdown(out, facts, minutes, lift, reviews, reports, leak, work) -> None:
    review_rows = pd.read_csv(reviews)
    flipped = set(facts["flipped"])
    given = pd.read_csv(work / "site_b" / "labels.csv")
    given_label = {
        str((work / "site_b" / p).resolve()): str(v)
        for p, v in zip(given["path"], given["label"], strict=True)
    }
    keys = review_rows["path"].map(lambda p: str(Path(p).resolve()))
    changed = review_rows[
        [str(v) != given_label[k] for k, v in zip(keys, review_rows["label"], strict=True)]
    ]
    corrected = len(changed)
    corrected_flips = changed["path"].map(lambda p: str(Path(p).resolve())).isin(flipped).sum()
    seeds = sorted({seed for _, seed in reports})
    a_auc, b_auc = auroc(reports["v2_reviewed", 0], "old"), auroc(reports["v2_reviewed", 0], "new")
    drop = a_auc["champion"] - b_auc["champion"]  # the champion's: the same for every seed

    def across_seeds(name: str, role: str, key: str = "difference") -> str:
        values = np.array([auroc(reports[name, s], role)[key] for s in seeds])
        return f"{values.mean():+.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"

    recovered = np.array([auroc(reports["v2_reviewed", s], "new")["difference"] for s in seeds])
    forgotten = np.array([auroc(reports["v2_reviewed", s], "old")["difference"] for s in seeds])
    lines = [
        "# Retraining on a new site: champion vs challenger",
        "",
        f"Machine: {machine()}.",
        "Command: `python benchmarks/retrain.py` (needs ../shared/data/medmnist).",
        "",
        "## Data",
        "",
        "PneumoniaMNIST (28 px), each official split halved at random (stratified by label; "
        "seed 0); every image is its own patient (MedMNIST has no patient ids).",
        f"- Site A (champion's): {facts['A']} scans per split, pixels unchanged.",
        f"- Site B (new scanner): {facts['B']} scans per split; contrast ×{CONTRAST} around "
        f"each image's mean plus Gaussian noise sd {NOISE_SD:g}/255; {len(flipped)} of its "
        f"{facts['B']['train']} training labels ({FLIP_SHARE:.0%}) flipped.",
        f"- Champion: `medres train --cohort site_a --epochs {EPOCHS}`; challengers: "
        "`medres retrain v1 --cohort site_b_noisy [--reviews reviews.csv] [--new-only]` "
        "(fine-tuning defaults: learning rate ×0.1, half the epochs; site A's training "
        "cohort rehearsed unless --new-only).",
        "",
        "## Site shift (test portions; paired bootstrap over patients, 1000 replicates)",
        "",
        f"Each challenger trained with seeds {', '.join(map(str, seeds))}; "
        "the champion is one model (seed 0).",
        "",
        "| challenger | seed | test set | champion AUC | challenger AUC | Δ AUC (95 % CI) "
        "| champion ACC | challenger ACC | Δ ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = [(name, seed) for name in LABELS for seed in seeds]
    for name, seed in order:
        report = reports[name, seed]
        for t in report["test_sets"]:
            m = t["metrics"]
            site = "site A (old)" if t["role"] == "old" else "site B (new)"
            lines.append(
                f"| {LABELS[name]} | {seed} | {site} | {m['auroc']['champion']:.3f} | "
                f"{m['auroc']['challenger']:.3f} | {m['auroc']['difference']:+.3f} "
                f"({m['auroc']['ci_low']:+.3f} to {m['auroc']['ci_high']:+.3f}) | "
                f"{m['accuracy']['champion']:.3f} | {m['accuracy']['challenger']:.3f} | "
                f"{m['ece']['difference']:+.3f} |"
            )
    lines += [
        "",
        "Mean ± sd over seeds of the challenger's Δ AUC:",
        "",
        "| challenger | Δ AUC site A (old) | Δ AUC site B (new) | share of the drop recovered |",
        "|---|---|---|---|",
        *[
            f"| {label} | {across_seeds(name, 'old')} | {across_seeds(name, 'new')} | "
            + ", ".join(f"{auroc(reports[name, s], 'new')['difference'] / drop:.1%}" for s in seeds)
            + " |"
            for name, label in LABELS.items()
        ],
        "",
        f"- The champion's AUC drops by {drop:.3f} from site A to site B; the challenger "
        f"(reviewed labels) recovers {recovered.mean():+.3f} on site B on average over "
        f"{len(seeds)} seeds (**{recovered.mean() / drop:.1%} of the drop**; per seed "
        + ", ".join(f"{r / drop:.1%}" for r in recovered)
        + f") and changes site A's AUC by {forgotten.mean():+.3f} on average (per seed "
        + ", ".join(f"{f:+.3f}" for f in forgotten)
        + ").",
        "- Verdicts (`medres compare`, margin 0.01): "
        + "; ".join(
            f"{LABELS[n]}: " + ", ".join(f"seed {s} **{reports[n, s]['verdict']}**" for s in seeds)
            for n in LABELS
        )
        + ". Reviewed labels, seed 0: "
        + " ".join(reports["v2_reviewed", 0]["reasons"]),
        "",
        "## Reviewed labels and label issues",
        "",
        f"- `medres label-issues --epochs {FOLD_EPOCHS}` (4-fold out-of-fold probabilities) "
        f"on site B's "
        f"{facts['B']['train']} training scans: among the top {lift['top']} (5 %), "
        f"{lift['flipped_in_top']} are truly flipped: {lift['share']:.1%} against a base "
        f"rate of {lift['base_rate']:.1%}, **{lift['lift']:.1f}× the base rate**.",
        f"- Simulated review of the top {REVIEW_SHARE:.0%} of that ranking "
        f"({len(review_rows)} decisions exported by `medres review export`): "
        f"{corrected} labels changed from the given one, {corrected_flips} of them truly "
        f"flipped ones (of {len(flipped)} flipped); the other flipped labels stay flipped.",
        "",
        "Mean ± sd over seeds:",
        "",
        "| challenger | site B AUC | site B ACC | site A AUC |",
        "|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        tables = [{x["role"]: x["metrics"] for x in reports[name, s]["test_sets"]} for s in seeds]

        def spread(role: str, metric: str, tables=tables) -> str:
            values = np.array([t[role][metric]["challenger"] for t in tables])
            return f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"

        lines.append(
            f"| {label} | {spread('new', 'auroc')} | {spread('new', 'accuracy')} | "
            f"{spread('old', 'auroc')} |"
        )
    lines += [
        "",
        "## Lineage and leakage",
        "",
    ]
    v2 = json.loads((work / "v2_reviewed" / "bundle.json").read_text())
    lines += [
        f"- Challenger `{v2['id'][:12]}` names parent `{(v2['parent_id'] or '')[:12]}` and "
        f"{len(v2['lineage'])} lineage entries: site A's cohort (the champion's), then its "
        "own training cohort, made of "
        + " and ".join(Path(x["path"]).name for x in v2["lineage"][-1]["sources"])
        + f" with the reviews file (sha256 {v2['cohort']['reviews']['sha256'][:12]}…).",
        f"- A site B cohort with one champion test patient in training: {leak}",
        "",
        "## Time (minutes, 2 cores; training: the fit recorded in each bundle.json)",
        "",
        "Other work on the machine overlapped some of these runs: upper bounds.",
        "",
        "| step | minutes |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in minutes.items()],
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
