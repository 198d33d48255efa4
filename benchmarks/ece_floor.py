"""How small can a measured ECE be on these test splits? The noise floor of the estimate.

ECE (15 equal-width bins) is estimated from a finite test split, so even a perfectly
calibrated model shows a positive ECE. For each MedMNIST bundle of
``benchmarks/medmnist.py`` this takes the bundle's calibrated test probabilities, draws
labels from them (then the probabilities are exactly calibrated by construction), and
measures the ECE of those labels: its mean and 95th percentile over 2000 draws give the
smallest ECE one can expect to see on a split of that size with that confidence
profile. The bundle's actual test ECE is shown beside it.

Usage::

    python benchmarks/ece_floor.py          # after python benchmarks/medmnist.py
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from medres.bundle import load_bundle
from medres.calibrate import expected_calibration_error
from medres.cohort import Cohort
from medres.inference import score_rows

HERE = Path(__file__).resolve().parent
DATASETS = ("pneumoniamnist", "retinamnist", "adrenalmnist3d")


def floor(probs: np.ndarray, draws: int, seed: int = 0) -> np.ndarray:
    """ECE of ``draws`` label sets drawn from (N, K) ``probs`` (perfect calibration)."""
    rng = np.random.default_rng(seed)
    cum = probs.cumsum(1)
    eces = np.empty(draws)
    for d in range(draws):
        labels = (rng.random((len(probs), 1)) > cum).sum(1).clip(max=probs.shape[1] - 1)
        eces[d] = expected_calibration_error(probs, labels)
    return eces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-medmnist"))
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ece_floor.md")
    args = parser.parse_args()
    lines = [
        "# The noise floor of ECE on the MedMNIST test splits",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"Python {platform.python_version()}. Command: `python benchmarks/ece_floor.py`.",
        "",
        "ECE: top-label, 15 equal-width bins, on each bundle's calibrated test probabilities. "
        f"'perfectly calibrated': labels drawn from those probabilities, {args.draws} draws.",
        "",
        "| dataset | seed | test scans | test ECE (measured) | ECE if perfectly calibrated: "
        "mean | 5th–95th percentile |",
        "|---|---|---|---|---|---|",
    ]
    for name in DATASETS:
        cohort = Cohort.load(args.work / name / "cohort_split.parquet")
        rows = cohort.labelled("test")
        for seed_dir in sorted((args.work / name).glob("seed*")):
            bundle = load_bundle(seed_dir / "bundle")
            scored = score_rows(bundle.model, bundle.info, bundle.spec, rows)
            probs = bundle.trust.assess(scored.outputs, scored.features).probs
            measured = expected_calibration_error(probs, scored.targets)
            eces = floor(probs, args.draws)
            low, high = np.percentile(eces, [5, 95])
            lines.append(
                f"| {name} | {seed_dir.name[4:]} | {len(probs)} | {measured:.3f} | "
                f"{eces.mean():.3f} | {low:.3f}–{high:.3f} |"
            )
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
