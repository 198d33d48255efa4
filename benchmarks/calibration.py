"""Calibration, conformal sets, referral and OOD of medres bundles on MedMNIST test splits.

Uses the bundles that ``benchmarks/medmnist.py`` trained (same --work folder, seeds 0 1
2): each is (re)calibrated on its validation split with the defaults of ``medres train``
(:func:`medres.evaluate.job.calibrate_bundle`), then measured on the official test split:

1. calibration: uncalibrated, temperature, Platt and isotonic (binary) — ECE (15 bins),
   adaptive ECE, MCE, NLL, Brier, calibration slope, AUC;
2. conformal sets at 90 %: LAC, APS and class-conditional LAC — coverage, mean set
   size, coverage per class;
3. referral: accuracy of the 80 % of scans left after referring the 20 % most
   uncertain, and AURC, for max probability, entropy, MC-dropout mutual information
   (20 samples), test-time augmentation entropy and a 3-seed ensemble;
4. OOD (PneumoniaMNIST models): AUROC of the bundle's Mahalanobis score, and of
   max-probability and energy baselines, for real images of other kinds — RetinaMNIST
   fundus photographs converted to grey and every slice of the DICOM MR / CT series
   under ../shared/data/dicom — against the PneumoniaMNIST test images.

Usage::

    python benchmarks/medmnist.py                 # trains the bundles (once)
    python benchmarks/calibration.py              # → benchmarks/results/calibration.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/...`
from benchmarks.medmnist import SHARED, machine
from medres.bundle import load_bundle
from medres.calibrate import calibration_metrics, make_calibrator
from medres.cohort import Cohort
from medres.errors import ScanError
from medres.evaluate.job import calibrate_bundle
from medres.inference import score_rows
from medres.io import read_scan
from medres.io.discover import discover
from medres.io.volume import Volume
from medres.transforms import build_transform
from medres.uncertainty.conformal import ConformalClassifier, set_report
from medres.uncertainty.referral import accuracy_after_referral, risk_coverage
from medres.uncertainty.sampling import ensemble_samples, forward_samples
from medres.uncertainty.scores import as_uncertainty, uncertainty_scores

HERE = Path(__file__).resolve().parent
DATASETS = ("pneumoniamnist", "retinamnist", "adrenalmnist3d")
MC_SAMPLES = 20
REFERRAL = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-medmnist"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "calibration.md")
    args = parser.parse_args()
    torch.manual_seed(0)
    lines = [
        "# Calibration, conformal sets, referral and OOD on MedMNIST test splits",
        "",
        f"Machine: {machine()}.",
        "Command: `python benchmarks/calibration.py` (after `python benchmarks/medmnist.py`).",
        "",
        "Bundles: the ResNet-18s of `benchmarks/results/medmnist.md` (seeds "
        f"{', '.join(map(str, args.seeds))}), each calibrated on its validation split with "
        "the `medres train` defaults; every figure is on the official test split, mean ± sd "
        "over seeds. ECE: top-label, 15 equal-width bins.",
    ]
    pneumonia = None
    for name in args.datasets:
        runs = [_run(name, seed, args.work) for seed in args.seeds]
        if not runs:
            continue
        print(f"{name}: {len(runs)} bundles scored", file=sys.stderr)
        lines += _calibration_section(name, runs)
        lines += _conformal_section(runs)
        lines += _recalibration_section(runs)
        lines += _referral_section(runs)
        if name == "pneumoniamnist":
            pneumonia = runs
    if pneumonia:
        lines += _ood_section(pneumonia, args.work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


def _run(name: str, seed: int, work: Path) -> dict:
    """Calibrate one bundle and score its val and test splits (plain, MC dropout, TTA)."""
    bundle_path = work / name / f"seed{seed}" / "bundle"
    cohort_path = work / name / "cohort_split.parquet"
    if not (bundle_path / "bundle.json").is_file():
        sys.exit(f"no bundle at {bundle_path}: run `python benchmarks/medmnist.py` first")
    calibrate_bundle(bundle_path, cohort_path)
    bundle = load_bundle(bundle_path)
    cohort = Cohort.load(cohort_path)
    val, test = (
        score_rows(bundle.model, bundle.info, bundle.spec, cohort.labelled(s))
        for s in ("val", "test")
    )
    rows = cohort.labelled("test")
    mc = score_rows(bundle.model, bundle.info, bundle.spec, rows, mc_samples=MC_SAMPLES, seed=seed)
    tta = score_rows(bundle.model, bundle.info, bundle.spec, rows, tta=True)
    return {
        "name": name,
        "seed": seed,
        "bundle": bundle,
        "val": val,
        "test": test,
        "mc": mc,
        "tta": tta,
    }


# ---------------------------------------------------------------- 1. calibration


def _calibration_section(name: str, runs: list[dict]) -> list[str]:
    binary = runs[0]["bundle"].info.task == "binary"
    methods = ["none", "temperature"] + (["platt", "isotonic"] if binary else [])
    keys = ("ece", "adaptive_ece", "mce", "nll", "brier", "slope", "auc")
    table = {m: {k: [] for k in keys} for m in methods}
    temperatures, accuracy = [], {"val": [], "test": []}
    for run in runs:
        val, test = run["val"], run["test"]
        for split, scored in (("val", val), ("test", test)):
            accuracy[split].append((scored.outputs[0].argmax(1) == scored.targets).mean())
        for method in methods:
            cal = make_calibrator(method).fit(val.outputs[0], val.targets)
            probs = cal.predict_proba(test.outputs[0])
            m = calibration_metrics(probs, test.targets)
            m["auc"] = _auc(test.targets, probs)
            for k in keys:
                table[method][k].append(m[k])
            if method == "temperature":
                temperatures.append(cal.temperature_)
    lines = [
        "",
        f"## {name}",
        "",
        f"### Calibration (test, {len(runs[0]['test'].targets)} scans; fitted on "
        f"{len(runs[0]['val'].targets)} validation scans)",
        "",
        f"Fitted temperatures: {', '.join(f'{t:.2f}' for t in temperatures)}. Accuracy: "
        f"validation {_ms(accuracy['val'])}, test {_ms(accuracy['test'])} — a temperature "
        "fitted on validation only transfers as far as the test split resembles it.",
        "",
        "| method | ECE | adaptive ECE | MCE | NLL | Brier | slope | AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        cells = " | ".join(_ms(table[method][k]) for k in keys)
        lines.append(f"| {'uncalibrated' if method == 'none' else method} | {cells} |")
    return lines


def _auc(y, probs) -> float:
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", labels=range(probs.shape[1])))


# ---------------------------------------------------------------- 2. conformal


def _conformal_section(runs: list[dict]) -> list[str]:
    variants = {
        "LAC": ConformalClassifier(0.9, "lac"),
        "APS": ConformalClassifier(0.9, "aps"),
        "LAC, class-conditional": ConformalClassifier(0.9, "lac", class_conditional=True),
    }
    classes = [str(c) for c in runs[0]["bundle"].info.classes]
    lines = [
        "",
        "### Conformal sets, target coverage 90 % (temperature-scaled probabilities)",
        "",
        "| score | coverage | mean set size | single-class sets | coverage per class ("
        + ", ".join(classes)
        + ") |",
        "|---|---|---|---|---|",
    ]
    for label, conformal in variants.items():
        cov, size, single, per_class = [], [], [], []
        for run in runs:
            trust = run["bundle"].trust
            fitted = conformal.fit(trust.calibrate(run["val"].outputs[0]), run["val"].targets)
            sets = fitted.predict_sets(trust.calibrate(run["test"].outputs[0]))
            report = set_report(sets, run["test"].targets, classes)
            cov.append(report["coverage"])
            size.append(report["mean_set_size"])
            single.append(report["singleton_rate"])
            per_class.append([c["coverage"] for c in report["per_class"]])
        by_class = ", ".join(f"{v:.3f}" for v in np.mean(per_class, axis=0))
        lines.append(f"| {label} | {_ms(cov)} | {_ms(size, 2)} | {_ms(single)} | {by_class} |")
    return lines


def _recalibration_section(runs: list[dict], repeats: int = 20) -> list[str]:
    """Calibration and conformal sets fitted on a random half of the test split and
    measured on the other half: exchangeable calibration data, as when a site
    recalibrates a bundle on its own labelled scans (`calibrate_bundle`)."""
    keys = ("ece_raw", "ece", "nll_raw", "nll", "lac", "lac_size", "aps", "aps_size")
    values = {k: [] for k in keys}
    for run in runs:
        z, y = run["test"].outputs[0], run["test"].targets
        rng = np.random.default_rng(run["seed"])
        for _ in range(repeats):
            order = rng.permutation(len(y))
            a, b = order[: len(y) // 2], order[len(y) // 2 :]
            raw = make_calibrator("none").fit(z[a], y[a]).predict_proba(z[b])
            ts = make_calibrator("temperature").fit(z[a], y[a])
            probs_a, probs_b = ts.predict_proba(z[a]), ts.predict_proba(z[b])
            m_raw, m_ts = calibration_metrics(raw, y[b]), calibration_metrics(probs_b, y[b])
            values["ece_raw"].append(m_raw["ece"])
            values["ece"].append(m_ts["ece"])
            values["nll_raw"].append(m_raw["nll"])
            values["nll"].append(m_ts["nll"])
            for score in ("lac", "aps"):
                sets = ConformalClassifier(0.9, score).fit(probs_a, y[a]).predict_sets(probs_b)
                report = set_report(sets, y[b])
                values[score].append(report["coverage"])
                values[f"{score}_size"].append(report["mean_set_size"])
    n = len(runs[0]["test"].targets)
    return [
        "",
        f"### Recalibrated on test data: fitted on a random half ({n // 2} scans), measured "
        f"on the other half; {repeats} random halves × {len(runs)} seeds",
        "",
        "| ECE uncalibrated | ECE temperature | NLL uncalibrated | NLL temperature "
        "| LAC 90 % coverage (set size) | APS 90 % coverage (set size) |",
        "|---|---|---|---|---|---|",
        f"| {_ms(values['ece_raw'])} | {_ms(values['ece'])} | {_ms(values['nll_raw'])} "
        f"| {_ms(values['nll'])} | {_ms(values['lac'])} ({_ms(values['lac_size'], 2)}) "
        f"| {_ms(values['aps'])} ({_ms(values['aps_size'], 2)}) |",
    ]


# ---------------------------------------------------------------- 3. referral


def _referral_section(runs: list[dict]) -> list[str]:
    rows: dict[str, dict[str, list[float]]] = {}

    def add(label, probs_samples, targets, score):
        probs = probs_samples.mean(0)
        correct = probs.argmax(1) == targets
        u = as_uncertainty(score, uncertainty_scores(probs_samples))
        row = rows.setdefault(label, {"all": [], "kept": [], "aurc": []})
        row["all"].append(correct.mean())
        row["kept"].append(accuracy_after_referral(u, correct, REFERRAL))
        row["aurc"].append(risk_coverage(u, correct)[2])

    for run in runs:
        trust, y = run["bundle"].trust, run["test"].targets
        plain = trust.calibrate(run["test"].outputs)
        add("max probability", plain, y, "max_prob")
        add("entropy", plain, y, "entropy")
        add(
            f"MC dropout ({MC_SAMPLES}), mutual information",
            trust.calibrate(run["mc"].outputs),
            y,
            "mutual_information",
        )
        add(f"MC dropout ({MC_SAMPLES}), entropy", trust.calibrate(run["mc"].outputs), y, "entropy")
        add(
            f"TTA ({run['tta'].outputs.shape[0]} views), entropy",
            trust.calibrate(run["tta"].outputs),
            y,
            "entropy",
        )
    if len(runs) > 1:
        members = ensemble_samples([r["bundle"].trust.calibrate(r["test"].outputs) for r in runs])
        y = runs[0]["test"].targets
        add(f"ensemble of {len(runs)} seeds, entropy", members, y, "entropy")
        add(f"ensemble of {len(runs)} seeds, mutual information", members, y, "mutual_information")
    lines = [
        "",
        f"### Referral: refer the {REFERRAL:.0%} most uncertain scans",
        "",
        "| uncertainty | accuracy, all scans | accuracy of the other "
        f"{1 - REFERRAL:.0%} | gain | AURC (lower is better) |",
        "|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        gain = [k - a for k, a in zip(r["kept"], r["all"], strict=True)]
        lines.append(
            f"| {label} | {_ms(r['all'])} | {_ms(r['kept'])} | {_ms(gain, sign=True)} "
            f"| {_ms(r['aurc'], 4)} |"
        )
    default = [r["bundle"].trust.referral for r in runs]
    lines += [
        "",
        "The bundles' own referral rule (conformal set not a single class, OOD, or max "
        f"probability below the level that gave {default[0]['target_accuracy']:.0%} "
        "validation accuracy), on test:",
        "",
        "| seed | referred | accuracy of the rest | all scans |",
        "|---|---|---|---|",
    ]
    for run in runs:
        a = run["bundle"].trust.assess(run["test"].outputs, run["test"].features)
        kept = ~a.refer
        rest = (a.predicted[kept] == run["test"].targets[kept]).mean() if kept.any() else np.nan
        everyone = (a.predicted == run["test"].targets).mean()
        lines.append(f"| {run['seed']} | {a.refer.mean():.1%} | {rest:.3f} | {everyone:.3f} |")
    return lines


# ---------------------------------------------------------------- 4. OOD


def _ood_section(runs: list[dict], work: Path) -> list[str]:
    spec = runs[0]["bundle"].spec
    sets = {
        "RetinaMNIST test, fundus photographs in grey": _retina_grey(work),
        "DICOM MR and CT slices (dicom2nifti series)": _dicom_slices(
            SHARED / "dicom" / "dicom2nifti"
        ),
        "DICOM MR slices (dcm_qa_nih, first time point)": _dicom_slices(
            SHARED / "dicom" / "dcm_qa_nih"
        ),
    }
    transform = build_transform(spec)
    tensors = {k: torch.stack([transform(v) for v in vols]) for k, vols in sets.items() if vols}
    lines = [
        "",
        "## Out of distribution: PneumoniaMNIST models",
        "",
        f"AUROC of telling each image set from the {len(runs[0]['test'].targets)} "
        "PneumoniaMNIST test images (1.0 = perfectly separated); the flagged share uses the "
        "bundle's threshold (95th percentile of validation scores). Mean ± sd over seeds.",
        "",
        "| images | n | Mahalanobis AUROC | flagged by the bundle | max-probability AUROC "
        "| energy AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for label, x in tensors.items():
        maha, flagged, maxp, energy = [], [], [], []
        for run in runs:
            bundle, test = run["bundle"], run["test"]
            logits, feats = forward_samples(bundle.model, x)
            ood = bundle.trust.ood
            inside, outside = ood.score(test.features), ood.score(feats.numpy())
            maha.append(_separation(inside, outside))
            flagged.append(float((outside > ood.threshold_).mean()))
            p_in = bundle.trust.calibrate(test.outputs[0]).max(1)
            p_out = bundle.trust.calibrate(logits[0].numpy().astype(np.float64)).max(1)
            maxp.append(_separation(-p_in, -p_out))
            e_in = -torch.logsumexp(torch.as_tensor(test.outputs[0]), 1).numpy()
            e_out = -torch.logsumexp(logits[0], 1).numpy()
            energy.append(_separation(e_in, e_out))
        lines.append(
            f"| {label} | {len(x)} | {_ms(maha)} | {_ms(flagged)} | {_ms(maxp)} | {_ms(energy)} |"
        )
    inside = [
        f"{(r['bundle'].trust.ood.flags(r['test'].features)).mean():.1%} (seed {r['seed']})"
        for r in runs
    ]
    lines += ["", f"In-distribution scans flagged (PneumoniaMNIST test): {', '.join(inside)}."]
    return lines


def _separation(inside: np.ndarray, outside: np.ndarray) -> float:
    """AUROC of 'outside' vs 'inside' by a score that is higher for outliers."""
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(y, np.r_[inside, outside]))


def _retina_grey(work: Path) -> list:
    """RetinaMNIST test photographs, converted to grey PNGs and read back by medres."""
    cohort = Cohort.load(work / "retinamnist" / "cohort_split.parquet")
    out = work / "ood" / "retina_grey"
    out.mkdir(parents=True, exist_ok=True)
    volumes = []
    for row in cohort.labelled("test").itertuples():
        grey = out / Path(row.path).name
        if not grey.exists():
            Image.open(row.path).convert("L").save(grey)
        volumes.append(read_scan(grey))
    return volumes


def _dicom_slices(root: Path) -> list:
    """Every slice of every readable DICOM series under ``root`` (the dcm_qa_nih series
    at their first time point), as 2D volumes. Series medres refuses are left out."""
    volumes = []
    for source in discover(root).scans:
        if source.kind != "dicom" or any("failing" in f for f in source.files):
            continue
        try:
            vol = read_scan(source)
        except ScanError:
            continue
        array = vol.array[:1]  # 4D series: channels are time points; keep the first
        if array.ndim != 4:
            continue
        for z in range(array.shape[3]):
            plane = array[..., z]
            if np.ptp(plane) > 0:
                volumes.append(Volume(plane, np.eye(4), dict(vol.meta)))
    return volumes


def _ms(values, digits: int = 3, sign: bool = False) -> str:
    values = [float(v) for v in values]
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{fmt.format(mean)} ± {sd:.{digits}f}"


if __name__ == "__main__":
    main()
