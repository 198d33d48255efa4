"""``medres compare``: champion and challenger on the same test scans, with paired
bootstrap confidence intervals of their differences, and a promotion verdict.

Test sets: the champion's own (``old``: its training cohort's test split, which no
retraining may train on) and each new cohort's test split. Both models score the same
scans; each bootstrap replicate resamples patients (a scan without a patient id is its
own patient) and measures both models on that same resample, so the CI is of the
difference itself (paired), not of two separate estimates.

Verdict ``promote`` when the challenger is non-inferior on the old test set (the lower
95 % bound of ΔAUC = challenger − champion is above −``margin``) and better on every
new one (the lower bound of ΔAUC is above 0); otherwise ``keep``, with the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medres.bundle import Bundle, load_bundle, training_cohort
from medres.calibrate import expected_calibration_error
from medres.cohort import Cohort
from medres.errors import ConfigError
from medres.evaluate.job import bundle_probabilities
from medres.files import FORMAT_KEY, read_versioned_json, write_json, write_text
from medres.frozen import check_no_leak, freeze

METRICS = ("auroc", "accuracy", "ece")
COMPARISON = "compare.json"
FORMAT = 1  # compare.json's format version (docs/formats.md#comparejson)
READS = (1,)  # the major versions read_comparison reads (no version: before versions, 1)
LOWER_IS_BETTER = {"ece"}


@dataclass
class TestSetComparison:
    """One test set: ``n_scans`` / ``n_patients`` both models scored, and per metric
    ``{champion, challenger, difference, ci_low, ci_high}`` (difference = challenger −
    champion, 95 % paired-bootstrap percentile CI)."""

    name: str
    role: str  # "old" (the champion's test set) or "new"
    cohort: str
    n_scans: int
    n_patients: int
    metrics: dict[str, dict[str, float]]


@dataclass
class Comparison:
    """Everything ``medres compare`` found; ``verdict`` is ``promote`` or ``keep``."""

    champion: dict[str, Any]
    challenger: dict[str, Any]
    margin: float
    n_boot: int
    test_sets: list[TestSetComparison]
    verdict: str
    reasons: list[str] = field(default_factory=list)
    split: str = "test"

    def to_dict(self) -> dict[str, Any]:
        return {
            FORMAT_KEY: FORMAT,
            "champion": self.champion,
            "challenger": self.challenger,
            "margin": self.margin,
            "n_boot": self.n_boot,
            "split": self.split,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "test_sets": [vars(t) for t in self.test_sets],
        }


def compare_bundles(
    champion_path: str | Path,
    challenger_path: str | Path,
    new_cohorts: list[str | Path],
    *,
    old_cohort: str | Path | None = None,
    split: str = "test",
    margin: float = 0.01,
    n_boot: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Compare two bundles on the champion's test set and on each new cohort's.

    Args:
        old_cohort: the champion's test cohort; default the cohort recorded in its
            ``bundle.json`` (refused if that file changed since).
        margin: the AUC a challenger may lose on the old test set and still be promoted.

    Raises:
        ConfigError: bundles of different tasks or classes, a regression task, a test set
            without both classes, or a recorded champion cohort that moved or changed.
        LeakageError: either bundle trained or selected on a patient of a test set (as
            its recorded training cohort shows).
    """
    champion, challenger = load_bundle(champion_path), load_bundle(challenger_path)
    _check_comparable(champion, challenger)
    if not 0 <= margin < 1:
        raise ConfigError(f"margin is an AUC difference in [0, 1); got {margin}")
    if n_boot < 100:
        raise ConfigError(f"n_boot must be at least 100 for a 95 % interval; got {n_boot}")
    sets = [("old", _champion_cohort(champion, old_cohort))]
    sets += [("new", Path(c)) for c in new_cohorts]
    training = [_trained_on(b) for b in (champion, challenger)]
    # every refusal before any scoring
    tests = [(role, path, _test_rows(path, split, training)) for role, path in sets]
    results = [
        _compare_on(champion, challenger, rows, role, path, margin, n_boot, seed)
        for role, path, rows in tests
    ]
    verdict, reasons = _verdict(results, margin)
    if champion.id == challenger.id:
        verdict, reasons = "keep", ["Champion and challenger are the same bundle.", *reasons]
    return Comparison(
        _describe(champion),
        _describe(challenger),
        margin,
        n_boot,
        results,
        verdict,
        reasons,
        split,
    )


def _test_rows(path: Path, split: str, training: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The labelled ``split`` rows of the cohort at ``path``, refused (ConfigError) with
    fewer than two classes, or (LeakageError) when a patient or scan of theirs is in
    ``training`` (each bundle's name and its train / val rows)."""
    rows = Cohort.load(path).labelled(split)
    if rows["label"].nunique() < 2:
        raise ConfigError(
            f"{path} has {rows['label'].nunique()} class(es) among its labelled "
            f"'{split}' scans; AUC needs both positives and negatives to compare on"
        )
    tested = freeze(rows)
    for name, trained in training:
        check_no_leak(
            tested,
            trained,
            f"{path.name}'s {split} split",
            sources=pd.Series(name, index=trained.index, dtype=object),
            claim="cannot compare on a test set a bundle trained or selected on",
            advice={name: _NOT_A_TEST_SET},
        )
    return rows


def write_comparison(comparison: Comparison, out: str | Path, *, drift: bool = True) -> Path:
    """``out/compare.json``, ``out/compare.md`` and ``out/differences.png``; with
    ``drift``, a drift report of the old test set against each new one (scored by the
    champion) in ``out/drift_<name>/``, embedded in ``compare.md``. Returns the Markdown
    path."""
    from medres.retrain.drift import drift_report
    from medres.retrain.drift_write import drift_markdown, write_drift

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / COMPARISON, comparison.to_dict())
    _forest_plot(comparison, out / "differences.png")
    sections = [comparison_markdown(comparison)]
    old = [t for t in comparison.test_sets if t.role == "old"]
    for new in [t for t in comparison.test_sets if t.role == "new"] if drift else []:
        report = drift_report(
            old[0].cohort, new.cohort, comparison.champion["path"], split=comparison.split
        )
        folder = f"drift_{new.name}"
        write_drift(report, out / folder)
        sections.append(drift_markdown(report, plot_prefix=f"{folder}/", level=2))
    return write_text(out / "compare.md", "\n".join(sections))


def read_comparison(folder: str | Path) -> dict[str, Any]:
    """``folder/compare.json`` as written by :func:`write_comparison`, its format checked.

    Raises:
        ConfigError: no compare.json in ``folder``, not JSON, or a format version this
            medres does not read (the message names the file and both versions).
    """
    path = Path(folder) / COMPARISON
    if not path.is_file():
        raise ConfigError(
            f"no {COMPARISON} in {folder}; run `medres compare CHAMPION CHALLENGER "
            f"--cohort NEW.parquet -o {folder}` first"
        )
    return read_versioned_json(path, COMPARISON, READS, ConfigError)


def comparison_markdown(c: Comparison) -> str:
    lines = [
        "# Champion vs challenger",
        "",
        f"- Champion: `{c.champion['id']}` ({c.champion['path']})",
        f"- Challenger: `{c.challenger['id']}` ({c.challenger['path']}), parent "
        f"`{c.challenger['parent_id']}`",
        f"- **Verdict: {c.verdict}**. " + " ".join(c.reasons),
        f"- Rule: promote when ΔAUC's 95 % lower bound is above −{c.margin:g} on the "
        "champion's test set (non-inferior) and above 0 on every new test set (better). "
        f"Paired bootstrap over patients, {c.n_boot} replicates.",
        "",
        "| test set | role | scans | patients | metric | champion | challenger "
        "| Δ (challenger − champion) | 95 % CI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in c.test_sets:
        for name, m in t.metrics.items():
            lines.append(
                f"| {t.name} | {t.role} | {t.n_scans} | {t.n_patients} | {name} "
                f"| {m['champion']:.3f} | {m['challenger']:.3f} | {m['difference']:+.3f} "
                f"| {m['ci_low']:+.3f} to {m['ci_high']:+.3f} |"
            )
    lines += ["", "![differences with 95 % CIs](differences.png)", ""]
    return "\n".join(lines)


def _compare_on(champion, challenger, rows, role, path, margin, n_boot, seed):
    scored = [_calibrated(b, rows) for b in (champion, challenger)]
    common = sorted(set(scored[0][0]) & set(scored[1][0]))
    if not common:
        raise ConfigError(f"no scan of {path} could be read by both bundles")
    aligned = []
    for ids, y, probs in scored:
        at = pd.Series(np.arange(len(ids)), index=ids)[common].to_numpy()
        aligned.append((y[at], probs[at]))
    y = aligned[0][0]
    table = rows.set_index("scan_id").loc[common]
    known = table["patient_id"].notna() & (table["patient_id"].astype(str).str.strip() != "")
    patients = table["patient_id"].where(known, table.index.to_series())  # else its own
    codes = pd.factorize(patients.astype(str))[0]
    point = [_metrics(y, p, None) for _, p in aligned]
    rng = np.random.default_rng(seed)
    diffs = {m: [] for m in METRICS}
    for _ in range(n_boot):
        counts = np.bincount(
            rng.integers(0, codes.max() + 1, codes.max() + 1), minlength=codes.max() + 1
        )
        w = counts[codes].astype(float)
        a, b = (_metrics(y, p, w) for _, p in aligned)
        for m in METRICS:
            diffs[m].append(b[m] - a[m])
    metrics = {}
    for m in METRICS:
        values = np.asarray(diffs[m], dtype=float)
        usable = values[~np.isnan(values)]  # AUC is undefined on a one-class resample
        low, high = np.percentile(usable, [2.5, 97.5]) if len(usable) else (np.nan, np.nan)
        metrics[m] = {
            "champion": point[0][m],
            "challenger": point[1][m],
            "difference": point[1][m] - point[0][m],
            "ci_low": float(low),
            "ci_high": float(high),
            "replicates": len(usable),
        }
    name = Path(path).stem
    return TestSetComparison(
        name, role, str(Path(path).resolve()), len(common), codes.max() + 1, metrics
    )


def _calibrated(bundle: Bundle, rows: pd.DataFrame):
    """(scan ids, targets (N,), calibrated probabilities (N, K)) of the readable rows."""
    scored, probs = bundle_probabilities(bundle, rows)
    return scored.rows["scan_id"].tolist(), scored.targets, probs


def _metrics(y, probs, w) -> dict[str, float]:
    """AUROC (binary: of the positive class; else macro one-vs-rest), argmax accuracy and
    top-label ECE, each weighted by ``w`` (bootstrap counts; None = 1)."""
    k = probs.shape[1]
    present = np.unique(y[w > 0] if w is not None else y)
    if len(present) < 2:
        auc = np.nan
    elif k == 2:
        auc = roc_auc_score(y, probs[:, 1], sample_weight=w)
    else:
        auc = _macro_auc(y, probs, w)
    weights = np.ones(len(y)) if w is None else w
    accuracy = float(np.average(probs.argmax(1) == y, weights=weights))
    return {
        "auroc": float(auc),
        "accuracy": accuracy,
        "ece": expected_calibration_error(probs, y, weights=weights),
    }


def _macro_auc(y, probs, w) -> float:
    """Mean one-vs-rest AUC over the classes present (sklearn's 'ovr' needs every class)."""
    aucs = []
    for c in range(probs.shape[1]):
        pos = y == c
        keep = w > 0 if w is not None else np.ones(len(y), bool)
        if pos[keep].any() and (~pos[keep]).any():
            aucs.append(roc_auc_score(pos, probs[:, c], sample_weight=w))
    return float(np.mean(aucs)) if aucs else np.nan


def _verdict(results: list[TestSetComparison], margin: float) -> tuple[str, list[str]]:
    reasons, ok = [], True
    for t in results:
        auc = t.metrics["auroc"]
        if t.role == "old":
            good = auc["ci_low"] > -margin
            word = "non-inferior" if good else "possibly worse"
            reasons.append(
                f"On the champion's test set ({t.name}) the challenger is {word}: ΔAUC "
                f"{auc['difference']:+.3f} (95 % CI {auc['ci_low']:+.3f} to "
                f"{auc['ci_high']:+.3f}; margin −{margin:g})."
            )
        else:
            good = auc["ci_low"] > 0
            word = "better" if good else "not shown better"
            reasons.append(
                f"On {t.name} the challenger is {word}: ΔAUC {auc['difference']:+.3f} "
                f"(95 % CI {auc['ci_low']:+.3f} to {auc['ci_high']:+.3f})."
            )
        ok = ok and good
    return ("promote" if ok else "keep"), reasons


_NOT_A_TEST_SET = (
    "Compare on a test split whose patients and scans neither bundle trained or "
    "validated on, or give the cohort that was the test set when the bundles were trained."
)


def _trained_on(bundle: Bundle) -> tuple[str, pd.DataFrame]:
    """How messages name ``bundle``'s recorded training cohort, and its train / val rows
    (none when it is gone or changed): no test patient may be among them."""
    path = training_cohort(bundle)
    name = f"bundle {bundle.id[:8]}'s training cohort {path.resolve() if path else ''}"
    if path is None:
        return name, pd.DataFrame(columns=["scan_id", "patient_id", "pixel_hash"])
    cohort = Cohort.load(path)
    return name, cohort.ok[cohort.ok["split"].isin(["train", "val"])]


def _champion_cohort(champion: Bundle, given) -> Path:
    if given is not None:
        return Path(given)
    path = training_cohort(champion)
    if path is None:
        raise ConfigError(
            f"the champion's test cohort {champion.trained_on.path} is gone or "
            "changed since it was trained; give it with --old-cohort COHORT.parquet"
        )
    return path


def _check_comparable(a: Bundle, b: Bundle) -> None:
    if not (a.info.kind.classifies and b.info.kind.classifies):
        raise ConfigError(
            "medres compare compares classifiers; evaluate regression bundles with "
            "`medres evaluate` on the same cohort"
        )
    if a.info.kind != b.info.kind or [str(c) for c in a.info.classes] != [
        str(c) for c in b.info.classes
    ]:
        raise ConfigError(
            f"the bundles predict different things ({a.info.task} {a.info.classes} vs "
            f"{b.info.task} {b.info.classes}); compare a challenger with its own champion"
        )


def _describe(b: Bundle) -> dict[str, Any]:
    return {
        "id": b.id,
        "path": str(b.path.resolve()),
        "parent_id": b.manifest.parent_id,
        "created": b.manifest.created,
    }


def _forest_plot(c: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medres.files import atomic_write

    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(4 * len(METRICS), 0.6 + 0.5 * len(c.test_sets))
    )
    for ax, m in zip(np.atleast_1d(axes), METRICS, strict=True):
        for i, t in enumerate(c.test_sets):
            d = t.metrics[m]
            ax.errorbar(
                d["difference"],
                i,
                xerr=[[d["difference"] - d["ci_low"]], [d["ci_high"] - d["difference"]]],
                fmt="o",
                color="C0" if t.role == "old" else "C1",
                capsize=3,
            )
        ax.axvline(0, color="grey", lw=0.8)
        if m == "auroc":
            ax.axvline(-c.margin, color="red", lw=0.8, ls="--")
        ax.set_yticks(range(len(c.test_sets)), [f"{t.name} ({t.role})" for t in c.test_sets])
        better = "lower is better" if m in LOWER_IS_BETTER else "higher is better"
        ax.set_title(f"Δ {m} ({better})", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
