"""`medres evaluate` and `medres calibrate`: a bundle on a cohort split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medres.cli.common import DeviceOption, app, console, print_metrics, user_errors


@app.command("evaluate")
def evaluate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    cohort: Annotated[Path, typer.Argument(help="Cohort manifest with labels and splits.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report folder to write.")],
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    strict: Annotated[
        bool, typer.Option(help="Exit 1 when any scan could not be read (see failures.csv).")
    ] = False,
    device: DeviceOption = None,
) -> None:
    """Evaluate a bundle on a cohort split: metrics with patient-level 95 % bootstrap CIs,
    patient-level results, a per-site table, ROC / PR plots; for classifiers also the
    calibration error before and after calibration, conformal coverage and set size per
    class, the risk–coverage curve and what the bundle's referral rule leaves to the model.

    Writes OUT/report.json (a `metrics` object mapping auroc, accuracy, ... to value,
    ci_low, ci_high), OUT/report.md, the plots and OUT/failures.csv (scans that could
    not be read; they are left out of the metrics, and --strict makes that exit 1).
    The binary operating point is the one chosen on validation when the bundle was
    trained.

    Example:

        medres evaluate bundles/pneumonia cohort_split.parquet --split test -o reports/test
    """
    import json

    from medres.evaluate.job import evaluate_bundle

    with user_errors():
        report, evaluation, failures = evaluate_bundle(
            bundle, cohort, out, split=split, device=device or "auto"
        )
    print_metrics(evaluation)
    console.print(f"report: {report}  and {report.parent / 'report.md'}")
    if evaluation.metrics.get("referral_rate") is not None:
        console.print(json.loads(report.read_text()).get("referral_sentence", ""))
    if len(failures):
        console.print(
            f"[yellow]warning:[/] {len(failures)} scan(s) could not be read and are not in "
            f"the metrics; see {report.parent / 'failures.csv'}"
        )
        if strict:
            raise typer.Exit(1)


@app.command("calibrate")
def calibrate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    cohort: Annotated[
        Path, typer.Argument(help="Cohort whose 'val' split to calibrate on (and 'train' for OOD).")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A trust setting: --set coverage=0.95 (repeatable)."),
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Refit a bundle's calibration, conformal sets, referral threshold and OOD model on a
    cohort's validation split, keeping its weights — e.g. on a new site's labelled scans,
    or for a bundle written by an older medres. `medres train` already does this.

    Settings (defaults): calibration=temperature (platt, isotonic: binary only; none),
    coverage=0.9, conformal_score=lac (or aps), class_conditional=false,
    referral_score=max_prob (or entropy), target_accuracy=0.95, ood_quantile=0.95.

    Example:

        medres calibrate bundles/pneumonia site_b_cohort.parquet --set coverage=0.95
    """
    from medres.config import apply_overrides, validate
    from medres.evaluate.job import calibrate_bundle
    from medres.uncertainty.trust import TrustConfig

    with user_errors():
        settings = validate(TrustConfig, apply_overrides({}, set_ or []), "trust settings")
        evaluations = calibrate_bundle(bundle, cohort, settings, device=device or "auto")
    print_metrics(evaluations)
    console.print(f"calibrated: {bundle / 'calibration.json'}")
