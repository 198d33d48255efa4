"""medres ResNet-18 vs the MedMNIST v2 paper, through medres's own command line.

For each dataset and seed: ``medres datasets medmnist`` → ``ingest`` → ``split
--keep-column split`` (the official split) → ``train --cohort`` (documented defaults,
nothing tuned per dataset, plus the benchmark's own 25-minute budget per run, as
``--set time_limit_minutes=25``: training has no time limit by default) →
``evaluate --split test``. Test AUC and ACC (mean ± sd over
seeds) are written beside the paper's ResNet-18 rows to ``benchmarks/results/medmnist.md``,
with the wall time of every run and the machine.

Usage::

    python benchmarks/medmnist.py                       # all datasets, seeds 0 1 2
    python benchmarks/medmnist.py --datasets retinamnist --seeds 0

Runs already finished (their ``report.json`` exists under --work) are not repeated, so
an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from medres.pipeline.results import machine

HERE = Path(__file__).resolve().parent
BUDGET = ["--set", "time_limit_minutes=25"]  # each run within 30 minutes (the must-show)
SHARED = Path(os.environ.get("MEDRES_SHARED_DATA", HERE.parents[1] / "shared" / "data"))

# name -> (npz file, the paper's ResNet-18 row (AUC, ACC), its best non-AutoML row)
DATASETS = {
    "pneumoniamnist": ("pneumoniamnist.npz", "ResNet-18 (28)", (0.944, 0.854), (0.962, 0.884)),
    "retinamnist": ("retinamnist.npz", "ResNet-18 (28)", (0.717, 0.524), (0.726, 0.528)),
    "adrenalmnist3d": ("adrenalmnist3d.npz", "ResNet-18 + 3D", (0.827, 0.721), (0.839, 0.758)),
    "adrenalmnist3d_64": (
        "adrenalmnist3d_64.npz",
        "ResNet-18 + 3D (28³ row)",
        (0.827, 0.721),
        (0.839, 0.758),
    ),
}


def medres(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "medres", *args], check=True)


def run_one(name: str, seed: int, work: Path, extra: list[str]) -> dict:
    """One full CLI run; returns its test metrics and timings (cached in result.json)."""
    npz = SHARED / "medmnist" / DATASETS[name][0]
    data, run = work / name, work / name / f"seed{seed}"
    result_file = run / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    cohort = data / "cohort_split.parquet"
    if not cohort.exists():
        medres("datasets", "medmnist", str(npz), "-o", str(data / "scans"))
        medres(
            "ingest",
            str(data / "scans"),
            "--labels",
            str(data / "scans" / "labels.csv"),
            "-o",
            str(data / "cohort.parquet"),
        )
        medres("split", str(data / "cohort.parquet"), "--keep-column", "split", "-o", str(cohort))
    start = time.perf_counter()
    medres(
        "train",
        "--cohort",
        str(cohort),
        "--seed",
        str(seed),
        *BUDGET,
        *extra,
        "-o",
        str(run / "bundle"),
        *(["--resume"] if (run / "bundle" / "checkpoints").exists() else []),
    )
    train_s = time.perf_counter() - start
    medres(
        "evaluate", str(run / "bundle"), str(cohort), "--split", "test", "-o", str(run / "report")
    )
    report = json.loads((run / "report" / "report.json").read_text())
    bundle = json.loads((run / "bundle" / "bundle.json").read_text())
    result = {
        "dataset": name,
        "seed": seed,
        "auc": report["metrics"]["auroc"]["value"],
        "acc": report["metrics"]["accuracy"]["value"],
        "auc_ci": [report["metrics"]["auroc"]["ci_low"], report["metrics"]["auroc"]["ci_high"]],
        "train_minutes": round(train_s / 60, 1),
        "epochs_run": bundle["training"]["epochs_run"],
        "best_epoch": bundle["training"]["best_epoch"],
        "stopped_by": bundle["training"]["stopped_by"],
        "model_args": bundle["model"]["args"],
        "preset": bundle["preprocess"]["preset"],
    }
    result_file.write_text(json.dumps(result, indent=2))
    return result


def write_markdown(results: list[dict], out: Path, command: str) -> None:
    lines = [
        "# MedMNIST: medres ResNet-18 vs the MedMNIST v2 paper",
        "",
        f"Machine: {machine()}.",
        f"Command: `{command}`.",
        "",
        "Official test splits; the same `medres train --cohort` defaults for every dataset. "
        "ACC is argmax accuracy, as in the paper. Paper rows from Yang et al., Scientific "
        "Data 2023 (Table 3/4).",
        "",
        "| dataset | seeds | medres AUC | medres ACC | paper row | paper AUC | paper ACC "
        "| best non-AutoML AUC / ACC | train min/run | epochs run (best) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (_, row, (p_auc, p_acc), (b_auc, b_acc)) in DATASETS.items():
        runs = [r for r in results if r["dataset"] == name]
        if not runs:
            continue
        auc, acc = ([r[k] for r in runs] for k in ("auc", "acc"))
        lines.append(
            f"| {name} | {len(runs)} | {_mean_sd(auc)} | {_mean_sd(acc)} | {row} | {p_auc:.3f} "
            f"| {p_acc:.3f} | {b_auc:.3f} / {b_acc:.3f} | "
            f"{', '.join(str(r['train_minutes']) for r in runs)} | "
            f"{', '.join(_epochs(r) for r in runs)} |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| dataset | seed | AUC (95% CI) | ACC | train min | model args |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, hi = r["auc_ci"]
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['auc']:.3f} ({lo:.3f}–{hi:.3f}) "
            f"| {r['acc']:.3f} | {r['train_minutes']} | `{json.dumps(r['model_args'])}` |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def _epochs(run: dict) -> str:
    limit = ", time limit" if run.get("stopped_by") == "the time limit" else ""
    return f"{run['epochs_run']} ({run['best_epoch']}{limit})"


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-medmnist"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "medmnist.md")
    parser.add_argument(
        "--train-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra `medres train` arguments (use none for the benchmark)",
    )
    args = parser.parse_args()
    if not (SHARED / "medmnist").exists():
        sys.exit(f"MedMNIST files not found under {SHARED / 'medmnist'}")
    for name in args.datasets:
        for seed in args.seeds:
            run_one(name, seed, args.work, args.train_args)
            # every finished run under --work, so separate invocations add up
            results = [
                json.loads(p.read_text()) for p in sorted(args.work.glob("*/seed*/result.json"))
            ]
            write_markdown(results, args.out, "python benchmarks/medmnist.py")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
