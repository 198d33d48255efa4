"""`medres`: the command line, thin verbs over the library (DESIGN §7).

Heavy imports (torch, pandas, pydicom) happen inside each verb so ``--help`` is instant.

Exit codes (README "Exit codes"), for schedulers: 0 done; 1 done, but with recorded
failures under ``--strict`` or a negative verdict (``promote``: not promoted); 2 bad
usage or refused input (a MedresError: :func:`user_errors`); 3 internal error, a bug
in medres (:func:`main`); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import ProgressColumn
from rich.text import Text

from medres.errors import ALLOW_LEAKAGE, MedresError, ReviewError

app = typer.Typer(
    name="medres",
    help="Calibrated, uncertainty-aware ResNet classifiers for folders of medical scans.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(help="Turn public datasets into scan folders.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
review_app = typer.Typer(
    help="Clinician review: load prediction runs into a review store, add reviewers, "
    "serve the review app, export their decisions as labels.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

console = Console(stderr=True)


@contextmanager
def user_errors():
    """Turn a MedresError (bad usage, refused input) into a one-line red message and exit
    code 2 (no traceback). Any other exception is a bug: :func:`main` makes it exit 3."""
    try:
        yield
    except MedresError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")
        raise typer.Exit(2) from None


class _ScansPerSecond(ProgressColumn):
    """A rich progress column: the task's current rate in scans per second."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} scans/s" if task.speed else "")


EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130


def main() -> None:
    """Console-script entry point (also ``python -m medres``): run the app and exit with
    the codes of the module docstring.

    Typer runs in standalone mode, so ``--help`` exits 0, usage errors 2, ``typer.Exit(n)``
    n, each as a SystemExit that passes through here. An unexpected exception is a bug:
    one red line names its type (not its message, which may hold patient data), the full
    traceback goes to a file only the user can read (mode 0600) whose path is printed,
    and the exit code is 3. ``MEDRES_TRACEBACK=1`` re-raises instead (developers).
    """
    try:
        app()
    except KeyboardInterrupt:  # typer maps Ctrl-C inside a verb to 130 itself
        console.print("[bold red]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        if os.environ.get("MEDRES_TRACEBACK") == "1":
            raise
        where = _save_traceback(e)
        console.print(
            f"[bold red]internal error:[/] this is a bug in medres ({type(e).__name__}); "
            f"{where}. Please report it.",
            soft_wrap=True,
        )
        sys.exit(EXIT_INTERNAL_ERROR)


def _save_traceback(error: BaseException) -> str:
    """Write the traceback of ``error`` to a new 0600 file in the temp folder; a phrase
    saying where it is (or why it could not be written)."""
    import tempfile
    import time
    import traceback

    from medres import __version__

    try:
        fd, path = tempfile.mkstemp(  # mkstemp creates the file 0600
            prefix=f"medres-error-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".txt"
        )
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"medres {__version__}, Python {sys.version.split()[0]}\n")
            f.write(f"command: {' '.join(sys.argv)}\n\n")
            f.write("".join(traceback.format_exception(error)))
    except OSError as e:
        return f"its traceback could not be saved ({type(e).__name__}: {e})"
    return f"the traceback (it may hold scan paths or ids) is in {escape(path)}, mode 0600"


@app.command()
def ingest(
    folder: Annotated[Path, typer.Argument(help="Folder of scans (DICOM, NIfTI, PNG/JPEG).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Manifest to write (.parquet).")],
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CSV with a 'label' column keyed by path, scan_id, series_uid, "
            "study_uid or patient_id."
        ),
    ] = None,
    site: Annotated[str | None, typer.Option(help="Site name for every scan.")] = None,
    modality: Annotated[
        str | None,
        typer.Option(
            help="DICOM modality of the files that carry none (PNG/JPEG, NIfTI), e.g. DX "
            "for radiograph exports: a bundle trained on them then accepts DX DICOM."
        ),
    ] = None,
    headers_only: Annotated[
        bool,
        typer.Option(
            "--headers-only",
            help="Do not decode pixels (fast; geometry is still checked, corrupt pixel "
            "data is not).",
        ),
    ] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any scan could not be read.")] = False,
) -> None:
    """Find every scan under FOLDER and write one manifest row per scan.

    DICOM series are grouped by SeriesInstanceUID (they may span folders), ordered by
    position, and checked (tilt, missing slices, mixed orientations). Unreadable scans
    become rows with status=error and the reason; other files are skipped and counted.

    Example:

        medres ingest scans/ --labels scans/labels.csv --site "St Elsewhere" -o cohort.parquet
        medres ingest png_exports/ --labels labels.csv --modality DX -o cohort.parquet
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from medres.cohort import build_cohort, summary_tables
    from medres.progress import progress as progress_display

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with user_errors():
        with progress_display(*columns, console=console, transient=True) as progress:
            cohort, report = build_cohort(
                folder,
                labels=labels,
                site=site,
                modality=modality,
                verify_pixels=not headers_only,
                progress=progress,
            )
        cohort.save(out)
    for table in summary_tables(cohort, report):
        Console().print(table)
    if report.unmatched_labels:
        shown = ", ".join(map(str, report.unmatched_labels[:5]))
        console.print(
            f"[yellow]warning:[/] {len(report.unmatched_labels)} labels match no scan ({shown})"
        )
    n_errors = int((cohort.table["status"] == "error").sum())
    console.print(f"wrote {out} ({len(cohort.table)} rows, {n_errors} with errors)")
    if strict and n_errors:
        raise typer.Exit(1)


@datasets_app.command("medmnist")
def datasets_medmnist(
    npz: Annotated[Path, typer.Argument(help="A MedMNIST v2 file, e.g. pneumoniamnist.npz.")],
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Folder to write (replaced if an earlier export).")
    ],
    limit: Annotated[
        int | None, typer.Option(min=1, help="Keep the first N images of each split.")
    ] = None,
    per_class: Annotated[
        int | None,
        typer.Option(min=1, help="Keep the first N images of each class in each split."),
    ] = None,
    splits: Annotated[
        str, typer.Option(help="Comma-separated official splits to export.")
    ] = "train,val,test",
) -> None:
    """Write a MedMNIST .npz as PNG (2D) or NIfTI (3D) files plus labels.csv and SOURCE.md.

    labels.csv has path, label, split (the official MedMNIST split) and an empty
    patient_id (MedMNIST has no patient ids). Then: medres ingest FOLDER --labels
    FOLDER/labels.csv -o COHORT.parquet

    Example:

        medres datasets medmnist pneumoniamnist.npz -o pneumonia --per-class 50
    """
    from rich.table import Table

    from medres.datasets.medmnist import export_medmnist

    with user_errors():
        s = export_medmnist(npz, out, splits=splits, limit=limit, per_class=per_class)
    head = "positives per label" if s.multi_label else "images per class"
    kind = "3D NIfTI" if s.is_3d else "2D PNG"
    shape = "x".join(map(str, s.image_shape))
    table = Table(title=f"{s.dataset}: {s.n_written} {kind} files")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column(head)
    for split, n in s.counts.items():
        per_label = ", ".join(f"{k}: {v}" for k, v in s.label_counts[split].items())
        table.add_row(split, str(n), per_label)
    Console().print(table)
    Console().print(
        f"wrote {s.out_dir} ({shape} images, labels.csv, SOURCE.md) in {s.seconds:.1f} s; "
        f"md5 of the input {s.md5}"
    )
    for w in s.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(w))}")


@datasets_app.command("slices")
def datasets_slices(
    folder: Annotated[
        Path, typer.Argument(help="Folder of 3D volumes with labels.csv (path, label, ...).")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder of 2D slices to write.")],
    axis: Annotated[int, typer.Option(help="Voxel axis to cut along (2: axial in RAS).")] = 2,
    min_fraction: Annotated[
        float, typer.Option(help="Keep slices where this share of voxels is above the minimum.")
    ] = 0.01,
    per_volume: Annotated[
        int | None, typer.Option(min=1, help="At most N evenly spaced slices per volume.")
    ] = None,
) -> None:
    """Cut 3D volumes into 2D PNG slices that carry their volume's label, split and
    patient (a volume without a patient id stands for its own patient), for slice-level
    classifiers such as the PET/CT slice-triage study's.

    Writes OUT/*.png, OUT/labels.csv (path, label, split, patient_id, volume,
    slice_index) and OUT/SOURCE.md (counts, skipped volumes).

    Example:

        medres datasets medmnist adrenalmnist3d_64.npz -o adrenal
        medres datasets slices adrenal -o adrenal_slices --per-volume 8
    """
    from medres.datasets.slices import export_slices

    with user_errors():
        s = export_slices(folder, out, axis=axis, min_fraction=min_fraction, per_volume=per_volume)
    low, median, high = s.slice_stats
    Console().print(
        f"wrote {s.n_slices} slices of {s.n_volumes} volumes to {s.out_dir} in {s.seconds:.1f} s "
        f"(per volume: {low}-{high}, median {median:g}; per split: {s.counts})"
    )
    if s.skipped or s.failed:
        console.print(
            f"[yellow]warning:[/] {len(s.skipped)} volume(s) had no slice above "
            f"--min-fraction and {len(s.failed)} could not be read; see {s.out_dir}/SOURCE.md"
        )


@datasets_app.command("motion")
def datasets_motion(
    volumes: Annotated[
        list[Path], typer.Argument(help="MR volumes: NIfTI files or DICOM series folders.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder of corrupted slices.")],
    test: Annotated[
        list[Path] | None,
        typer.Option(help="A volume whose slices form the test set (repeatable)."),
    ] = None,
    per_slice: Annotated[
        int, typer.Option(min=1, help="Versions of each slice (one motion-free).")
    ] = 8,
    size: Annotated[str, typer.Option(help="Slice size X,Y in pixels.")] = "96,96",
    min_foreground: Annotated[
        float, typer.Option(help="Keep slices whose head covers at least this share.")
    ] = 0.15,
    slab: Annotated[
        int, typer.Option(min=1, help="Neighbouring slices kept on one side of a split.")
    ] = 16,
    seed: Annotated[int, typer.Option(help="The same seed gives the same images.")] = 0,
) -> None:
    """Simulate patient motion in k-space on real MR slices and label each with its SSIM
    against the motion-free slice (the SSIM-regression study's training data).

    VOLUMES are sliced along all three axes and shared between train and val by slabs;
    --test volumes are sliced in-plane where they are thin and form the test split.
    Writes OUT/<volume>/*.png, OUT/labels.csv (path, label = SSIM, patient_id, split,
    source, axis, slice_index, severity) and OUT/SOURCE.md.

    Example:

        medres datasets motion mni152_t1.nii.gz --test subject2.nii.gz -o motion
    """
    from medres.datasets.motion import MotionSource, export_motion

    with user_errors():
        try:
            shape = tuple(int(v) for v in size.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 2:
            from medres.errors import ConfigError

            raise ConfigError(f"--size expects X,Y such as 96,96; got {size!r}")
        sources = [MotionSource(v) for v in volumes] + [MotionSource(v, "test") for v in test or []]
        s = export_motion(
            sources,
            out,
            per_slice=per_slice,
            size=shape,
            min_foreground=min_foreground,
            slab=slab,
            seed=seed,
        )
    Console().print(
        f"wrote {s.n_images} images ({s.n_slices} slices x {per_slice}) to {s.out_dir} in "
        f"{s.seconds:.1f} s; per split {s.counts}; SSIM {s.ssim_min:.3f} / "
        f"{s.ssim_median:.3f} / {s.ssim_max:.3f} (min / median / max)"
    )
    for w in s.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(w))}")


def _print_split_warnings(caught) -> None:
    """Print each distinct SplitWarning caught during a split or audit, in bold red."""
    from medres.split import SplitWarning

    for message in dict.fromkeys(str(w.message) for w in caught if w.category is SplitWarning):
        console.print(f"[bold red]warning:[/] {escape(message)}")


@app.command("split")
def split_command(
    cohort: Annotated[Path, typer.Argument(help="Cohort manifest (.parquet) to split.")],
    fractions: Annotated[
        str, typer.Option(help="train,val,test shares summing to 1; val may be 0.")
    ] = "0.7,0.15,0.15",
    keep_column: Annotated[
        str | None,
        typer.Option(help="Keep the train/val/test split already in this column."),
    ] = None,
    holdout_site: Annotated[
        str | None, typer.Option(help="Make every scan of this site the test set.")
    ] = None,
    keep_test_column: Annotated[
        str | None,
        typer.Option(help="Keep the test set in this column; draw train/val from the rest."),
    ] = None,
    unit: Annotated[
        str,
        typer.Option(
            help="patient, or scan: draw train/val scan by scan (leaky on purpose; needs "
            "--keep-test-column)."
        ),
    ] = "patient",
    seed: Annotated[int, typer.Option(help="The same seed gives the same split.")] = 0,
    move_copies_to_test: Annotated[
        bool,
        typer.Option(
            help="Move train/val scans whose pixels repeat a test scan's into test "
            "(`medres train` refuses such copies)."
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", help="Manifest to write; default: replace COHORT."),
    ] = None,
) -> None:
    """Split a cohort into train / val / test by patient, stratified by label, and audit it.

    Each patient's scans go to one split; label shares stay close to the cohort's.
    Scans without a patient id are split one by one, with a loud warning.
    --keep-test-column keeps a given (e.g. official, patient-level) test set and redraws
    train / val; with --unit scan they are drawn slice by slice, so one patient sits in
    both and validation figures are optimistic: the slice-level split of the PET/CT
    study, for measuring how much it flatters a model. --move-copies-to-test moves
    every train/val scan with the same pixels as a test scan (pixel_hash) into test and
    lists them: `medres train` refuses a cohort whose test scans have copies in train
    or val (official splits sometimes hold such copies). The result is audited, then
    written atomically.

    Example:

        medres split cohort.parquet --fractions 0.8,0.1,0.1 --seed 1
        medres split slices.parquet --keep-test-column split --unit scan -o leaky.parquet
        medres split cohort.parquet --keep-column split --move-copies-to-test
    """
    import warnings

    from medres.cohort import Cohort
    from medres.errors import quote_some
    from medres.split import (
        SplitWarning,
        audit_cohort,
        parse_fractions,
        split_cohort,
        summary_table,
    )

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        result = split_cohort(
            Cohort.load(cohort),
            fractions=parse_fractions(fractions),
            seed=seed,
            keep_column=keep_column,
            holdout_site=holdout_site,
            keep_test_column=keep_test_column,
            unit=unit,
            move_copies_to_test=move_copies_to_test,
        )
        report = audit_cohort(result, splitting=True)
        path = result.save(out or cohort)
    Console().print(summary_table(report, title=f"Split of {path.name}"))
    _print_split_warnings(caught)
    if move_copies_to_test:
        moved = result.meta["split_copies_moved_to_test"]
        shown = f": {escape(quote_some(moved))}" if moved else ""
        console.print(
            f"moved {len(moved)} train/val scan(s) to test, copies of test scans' pixels{shown}"
        )
    console.print(f"wrote {path} (split by {result.meta['split_by']})")


@app.command("audit")
def audit_command(
    cohort: Annotated[Path, typer.Argument(help="Split cohort manifest (.parquet).")],
) -> None:
    """Audit a split cohort as `medres train` does, and count each split.

    Refused (exit 2, with the message `medres train` gives): a patient in two splits
    (train + val is allowed in a deliberately scan-level split, `medres split --unit
    scan`), and copies of test scans in train or val (the same pixel_hash; `medres split
    --keep-column split --move-copies-to-test` moves them into test). Identical pixels in
    train and val only are a warning, and so are scans without a patient id.

    Example:

        medres audit cohort.parquet
    """
    import warnings

    from medres.cohort import Cohort
    from medres.split import SplitWarning, audit_cohort, summary_table

    with user_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        report = audit_cohort(Cohort.load(cohort))
    Console().print(summary_table(report, title=f"Audit of {cohort.name}"))
    _print_split_warnings(caught)
    if report.scans_without_patient_id:
        console.print(
            f"[bold red]warning:[/] {report.scans_without_patient_id} split scans have no "
            "patient_id: the audit cannot tell whether their patients cross splits"
        )
    console.print(
        "no patient appears in more than one split and no test scan has a copy in train or val"
    )


@app.command("train")
def train_command(
    config: Annotated[
        Path | None, typer.Argument(help="TOML config with `cohort` and a [train] table.")
    ] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle folder to write.")] = Path(
        "bundle"
    ),
    cohort: Annotated[
        Path | None, typer.Option(help="Split cohort (.parquet); replaces the config's cohort.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Registry name, e.g. resnet18.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (runs are repeatable).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a [train] key: --set lr=3e-4 (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from OUT/checkpoints/last.pt.")
    ] = False,
    allow_leakage: Annotated[
        bool,
        typer.Option(
            help="When the audit finds a patient, or a test scan's pixel copy, in two "
            f"splits: {ALLOW_LEAKAGE}."
        ),
    ] = False,
) -> None:
    """Train a classifier and write a bundle (weights, preprocessing, metrics, model card).

    With --cohort alone every choice comes from the cohort: 2D or 3D, channels, classes
    (two → binary, more → multiclass, non-integer numbers → regression) and a preset;
    the documented defaults (ResNet-18, AdamW 1e-3, cosine schedule, 30 epochs, an
    average of the weights, early stopping on validation AUROC) are meant to be used as
    is; --set time_limit_minutes=25 sets a time budget (none by default, so that results
    do not depend on how busy the machine is). The operating
    point is chosen on the validation split; the model card reports validation and test
    metrics with patient-level 95 % CIs.

    The cohort is audited before anything is trained: a patient in two splits, or a test
    scan whose pixels repeat in train or val, is refused (exit 2, naming them; `medres
    split --move-copies-to-test` fixes the copies). --allow-leakage trains anyway, for a
    deliberate experiment: bundle.json (training.leakage_allowed) and the model card's
    limitations say so. A deliberately scan-level split (`medres split --unit scan`)
    may share patients between train and val.

    Example:

        medres train --cohort cohort_split.parquet -o bundles/pneumonia
        medres train pipeline.toml --set task=ordinal --set epochs=50 -o bundles/dr
    """
    import json

    from medres.config import apply_overrides, read_toml, validate
    from medres.errors import ConfigError
    from medres.evaluate import metrics_table
    from medres.train import TrainConfig
    from medres.workflow import train_bundle

    with user_errors():
        data = read_toml(config) if config else {}
        unknown = sorted(set(data) - {"cohort", "train"})
        if unknown:
            raise ConfigError(f"{config}: unknown top-level keys {unknown}; use cohort, [train]")
        cohort_path = cohort or (
            (config.parent / data["cohort"]) if config and "cohort" in data else None
        )
        if cohort_path is None:
            raise ConfigError("give a cohort: --cohort COHORT.parquet (or `cohort` in CONFIG)")
        train = dict(data.get("train", {}))
        for key, value in (("model", model), ("epochs", epochs), ("seed", seed)):
            if value is not None:
                train[key] = value
        train = apply_overrides(train, set_ or [])
        settings = validate(TrainConfig, train, f"[train] settings of {config or 'command line'}")
        bundle_json, evaluations = train_bundle(
            cohort_path, settings, out, resume=resume, allow_leakage=allow_leakage
        )
    training = json.loads(bundle_json.read_text())["training"]
    if training["stopped_by"] == "the time limit":
        console.print(
            f"[yellow]training reached its {settings.time_limit_minutes:g}-minute limit after "
            f"{training['epochs_run']} of {settings.epochs} epochs[/] (the best of them is "
            "bundled); --set time_limit_minutes=0 lifts the limit"
        )
    for split, evaluation in evaluations.items():
        table = metrics_table(evaluation)
        table.title = f"{split}: {table.title}"
        Console().print(table)
    console.print(f"bundle: {bundle_json.parent}  (model card: {bundle_json.parent}/model_card.md)")


@app.command("evaluate")
def evaluate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    cohort: Annotated[Path, typer.Argument(help="Cohort manifest with labels and splits.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report folder to write.")],
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    strict: Annotated[
        bool, typer.Option(help="Exit 1 when any scan could not be read (see failures.csv).")
    ] = False,
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

    from medres.evaluate import metrics_table
    from medres.workflow import evaluate_bundle

    with user_errors():
        report, evaluation, failures = evaluate_bundle(bundle, cohort, out, split=split)
    Console().print(metrics_table(evaluation))
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
    from medres.evaluate import metrics_table
    from medres.uncertainty.trust import TrustConfig
    from medres.workflow import calibrate_bundle

    with user_errors():
        settings = validate(TrustConfig, apply_overrides({}, set_ or []), "trust settings")
        evaluations = calibrate_bundle(bundle, cohort, settings)
    for split, evaluation in evaluations.items():
        table = metrics_table(evaluation)
        table.title = f"{split}: {table.title}"
        Console().print(table)
    console.print(f"calibrated: {bundle / 'calibration.json'}")


@app.command("predict")
def predict_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    folder: Annotated[Path, typer.Argument(help="Folder of scans (DICOM, NIfTI, PNG/JPEG).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder (new, or to resume).")],
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(help="Another bundle of the same task to average with (repeatable)."),
    ] = None,
    mc_samples: Annotated[
        int, typer.Option(help="MC-dropout samples per scan (0: one deterministic pass).")
    ] = 0,
    tta: Annotated[bool, typer.Option(help="Add test-time flips and small rotations.")] = False,
    explain: Annotated[
        bool, typer.Option(help="Write a Grad-CAM heatmap per scan under OUT/explain.")
    ] = False,
    strict: Annotated[
        bool, typer.Option(help="Exit 1 when any scan could not be predicted.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes decoding scans (default: 2 on 2+ cores).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Scans per forward pass.")] = 32,
    chunk_size: Annotated[
        int, typer.Option(help="Rows per crash-safe chunk (an interruption loses at most one).")
    ] = 256,
    flag_below: Annotated[
        float | None,
        typer.Option(help="Regression QA gate: refer scans predicted below this value."),
    ] = None,
) -> None:
    """Predict every scan under FOLDER with the bundle's own preprocessing, calibration,
    conformal sets, OOD model and referral rule.

    Writes OUT/predictions.parquet and .csv (one row per scan: probabilities raw and
    calibrated, predicted class, conformal set, uncertainty, OOD score, refer and why),
    OUT/failures.csv (one row per scan that could not be predicted, and why) and
    OUT/run.json (counts, timings, scans/s). Rows are saved in crash-safe chunks: run
    the same command again after an interruption and it completes the rest, skipping
    scans already predicted. Files that are not scans (text, JSON, DICOMDIR) are skipped
    and counted. A regression bundle (e.g. predicted SSIM) refers the scans predicted
    below --flag-below (default: the bundle's own flag_below, if it was trained with one).

    Example:

        medres predict bundles/pneumonia /data/tonight -o predictions/tonight --explain
        medres predict bundles/mr_motion /data/mr -o qa/tonight --flag-below 0.9
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from medres.predict import PredictOptions, predict_folder
    from medres.progress import progress as progress_display

    options = PredictOptions(
        ensemble=list(ensemble or []),
        mc_samples=mc_samples,
        tta=tta,
        explain=explain,
        workers=workers,
        batch_size=batch_size,
        chunk_size=chunk_size,
        flag_below=flag_below,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _ScansPerSecond(),
        TimeRemainingColumn(),
    )
    with user_errors(), progress_display(*columns, console=console, transient=True) as progress:
        run = predict_folder(bundle, folder, out, options, progress=progress)
    counts, summary = run.summary["counts"], Table(title=f"medres predict → {out}")
    summary.add_column("")
    summary.add_column("scans", justify="right")
    for name in ("predicted_now", "already_predicted", "failed", "referred", "files_skipped"):
        if counts.get(name) is not None:
            summary.add_row(name.replace("_", " "), str(counts[name]))
    Console().print(summary)
    rate = run.summary["scans_per_second"]
    speed = f"{rate:.1f} scans/s" if rate else "nothing new to predict"
    console.print(f"{speed}; predictions: {out / 'predictions.parquet'} (and .csv)")
    if run.failures:
        console.print(
            f"[yellow]warning:[/] {len(run.failures)} scan(s) could not be predicted; "
            f"see {out / 'failures.csv'}"
        )
        if strict:
            raise typer.Exit(1)


@app.command("label-issues")
def label_issues_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder written by `medres train`.")],
    cohort: Annotated[Path, typer.Argument(help="Cohort manifest (.parquet) to rank.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Label-issues CSV to write.")],
    split: Annotated[str, typer.Option(help="Labelled split to cross-fit.")] = "train",
    folds: Annotated[int, typer.Option(min=2, help="Cross-fitting folds (by patient).")] = 4,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs per fold (default: the bundle's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and fold models.")] = 0,
) -> None:
    """Rank scans whose label looks wrong (confident learning), or, for an unlabelled
    cohort, the scans a labeller should look at first (active learning).

    A cohort with labelled SPLIT scans is cross-fitted: FOLDS models, each trained with
    the bundle's own configuration on the other folds (grouped by patient, stratified
    by label) and selected on the cohort's val split, give every scan out-of-fold
    probabilities; cleanlab ranks the scans by how little those support the given
    label and flags the likely errors. A cohort without labels is ranked by the
    bundle's calibrated uncertainty instead.

    Writes OUT (one row per scan, rank 1 first: given and suggested label, label
    quality, probabilities, flagged, reason); load it for review with
    `medres review load --label-issues OUT --store DB`.

    Example:

        medres label-issues bundles/pneumonia cohort_split.parquet -o issues.csv --epochs 10
        medres review load --label-issues issues.csv --store review.db
    """
    import warnings

    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.table import Table

    from medres.progress import progress as progress_display
    from medres.retrain.label_issues import SkippedScansWarning, label_issues

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with (
        user_errors(),
        warnings.catch_warnings(record=True) as caught,
        progress_display(*columns, console=console, transient=True) as progress,  # fit's nest
    ):
        warnings.simplefilter("always")
        table = label_issues(
            bundle,
            cohort,
            out,
            split=split,
            folds=folds,
            epochs=epochs,
            seed=seed,
            progress=progress,
        )
    for message in dict.fromkeys(
        str(w.message) for w in caught if w.category is SkippedScansWarning
    ):
        console.print(f"[yellow]warning:[/] {escape(message)}")
    labelled = bool((table["given_label"] != "").any())
    shown = Table(title=f"medres label-issues → {out} (top {min(10, len(table))})")
    names = ["rank", "scan_id", "given_label", "suggested_label", "label_quality", "flagged"]
    if not labelled:
        names = ["rank", "scan_id", "suggested_label", "p_suggested"]
    for name in names:
        shown.add_column(name.replace("_", " "), justify="right" if name != "scan_id" else "left")
    for row in table.head(10).to_dict("records"):
        cells = [row[name] for name in names]
        shown.add_row(*(f"{v:.3f}" if isinstance(v, float) else escape(str(v)) for v in cells))
    Console().print(shown)
    if labelled:
        console.print(
            f"{int(table['flagged'].sum())} of {len(table)} '{split}' scans flagged as possible "
            f"label errors; review them: medres review load --label-issues {out} --store DB"
        )
    else:
        console.print(
            f"{len(table)} unlabelled scans ranked by uncertainty; review the first: "
            f"medres review load --label-issues {out} --store DB --top 50"
        )


_STORE_HELP = "Review store: a SQLite file (created when missing) or a database URL."


@review_app.command("load")
def review_load(
    store: Annotated[str, typer.Option(help=_STORE_HELP)],
    outdir: Annotated[
        Path | None, typer.Argument(help="Output folder of `medres predict`.")
    ] = None,
    label_issues: Annotated[
        Path | None,
        typer.Option(help="A `medres label-issues` CSV to load instead of an OUTDIR."),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --label-issues: the first N by rank (default: the flagged rows; "
            "every row of an unlabelled cohort's CSV).",
        ),
    ] = None,
    show_patient_ids: Annotated[
        bool,
        typer.Option(
            "--show-patient-ids",
            help="Keep patient ids as they are (default: salted-hash pseudonyms).",
        ),
    ] = False,
    site: Annotated[
        str | None, typer.Option(help="Site of every scan whose prediction names none.")
    ] = None,
) -> None:
    """Load a prediction run into the review store: one case per predicted scan.

    Cases are ordered for review: out of distribution first, then multi-class
    conformal sets, then the most uncertain.

    Loading the same OUTDIR again changes nothing (scans predicted into it since are
    added). Patient ids are stored as pseudonyms unless --show-patient-ids is given.

    With --label-issues ISSUES.csv (from `medres label-issues`) the scans become cases
    referred as "possible label error: labelled X, model says Y" (or "uncertain (active
    learning)"), the suggested label as the predicted class: agree relabels the scan,
    disagree with the given label keeps it. Reloading adds only scans not loaded yet.

    Example:

        medres review load predictions/tonight --store review.db --site "St Elsewhere"
        medres review load --label-issues issues.csv --store review.db --top 30
    """
    from medres.review import ReviewStore

    with user_errors():
        if (outdir is None) == (label_issues is None):
            raise ReviewError("give either OUTDIR (a predict output) or --label-issues CSV")
        if top is not None and label_issues is None:
            raise ReviewError("--top applies to --label-issues only")
    with user_errors(), ReviewStore(store) as db:
        if label_issues is not None:
            result = db.load_label_issues(
                label_issues, top=top, show_patient_ids=show_patient_ids, site=site
            )
        else:
            result = db.load_run(outdir, show_patient_ids=show_patient_ids, site=site)
        pending = len(db.worklist(run_id=result.run_id, status="pending"))
    if result.new:
        what = f"loaded run {result.run_id}: {result.cases_added} cases"
    elif result.cases_added:
        what = f"run {result.run_id} was loaded before; added {result.cases_added} new cases"
    else:
        what = f"run {result.run_id} was loaded before; nothing changed"
    console.print(f"{what} ({pending} pending review) in {store}")


@review_app.command("add-user")
def review_add_user(
    name: Annotated[str, typer.Argument(help="Reviewer name (letters, digits, . _ @ -).")],
    users: Annotated[
        Path | None,
        typer.Option(help="Users file; default: review_users.json beside --store, or here."),
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="The review store whose users file to use.")
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first stdin line."),
    ] = False,
) -> None:
    """Add a reviewer account (or set a new password for one) in the local users file.

    The password is asked for twice with hidden input (or read from stdin) and kept
    only as a salted scrypt hash; the file is readable by its owner only.

    Example:

        medres review add-user dr_lee --store review.db
        printf '%s\\n' "$PASSWORD" | medres review add-user dr_lee --password-stdin
    """
    import sys

    from medres.review import add_user, default_users_path

    path = users or default_users_path(store)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    with user_errors():
        new = add_user(path, name, password)
    console.print(f"{'added' if new else 'changed the password of'} {name} in {path}")


@review_app.command("export")
def review_export(
    store: Annotated[str, typer.Option(help=_STORE_HELP)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Labels CSV to write.")],
    run: Annotated[int | None, typer.Option(help="Only this run's decisions.")] = None,
) -> None:
    """Write the reviewed labels as a CSV that `medres ingest --labels` accepts.

    One row per reviewed scan, its latest decision: path, label (the corrected label on
    disagree, the predicted class on agree), scan_id, decision, reviewer, decided_at
    (UTC), predicted_class, bundle_id. Scans marked uncertain are left out.

    Example:

        medres review export --store review.db -o reviewed_labels.csv
        medres ingest /data/tonight --labels reviewed_labels.csv -o new_cohort.parquet
    """
    from medres.review import ReviewStore

    with user_errors(), ReviewStore(store, create=False) as db:
        table = db.export_labels(out, run_id=run)
    counts = table["decision"].value_counts().to_dict()
    console.print(
        f"wrote {out} ({len(table)} labels: {counts.get('agree', 0)} agree, "
        f"{counts.get('disagree', 0)} disagree)"
    )


@review_app.command("serve")
def review_serve(
    store: Annotated[str, typer.Option(help="Review store: a SQLite file or a database URL.")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8501,
    host: Annotated[
        str,
        typer.Option(help="Address to bind; 127.0.0.1 keeps the app on this computer."),
    ] = "127.0.0.1",
    users: Annotated[
        Path | None,
        typer.Option(help="Users file; default: review_users.json beside --store, or here."),
    ] = None,
) -> None:
    """Serve the review app (Streamlit) on the store: sign-in, worklist, case view,
    dashboard, export. Runs in the foreground; Ctrl-C stops it.

    Bound to 127.0.0.1 unless --host says otherwise: to serve several reviewers, put it
    behind an HTTPS reverse proxy rather than exposing it directly.

    Example:

        medres review serve --store review.db --port 8501
        medres review serve --store postgresql+psycopg://medres@db/review \\
            --users /etc/medres/users.json
    """
    import os

    from medres.review import ReviewStore, default_users_path
    from medres.review.serve import streamlit_command
    from medres.review.users import list_users

    users_path = users or default_users_path(store)
    with user_errors():
        ReviewStore(store, create=False).close()  # refuse a missing store before starting
        if not list_users(users_path):
            raise ReviewError(
                f"no reviewer account in {users_path}; add one first: "
                f"`medres review add-user NAME --store {store}`"
            )
        argv, environment = streamlit_command(store, users_path, host=host, port=port)
    console.print(
        f"review app: http://{host}:{port}  (store {store}, users {users_path}); Ctrl-C stops it",
        soft_wrap=True,
    )
    os.execve(argv[0], argv, environment)  # the server replaces this process: signals reach it


# ------------------------------------------------------------------ retraining (step 6)


@app.command("retrain")
def retrain_command(
    bundle: Annotated[Path, typer.Argument(help="The champion bundle.")],
    cohort: Annotated[
        list[Path], typer.Option(help="New split cohort (.parquet); repeat for several.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Challenger bundle folder.")],
    reviews: Annotated[
        Path | None,
        typer.Option(help="Reviewed labels (`medres review export` CSV) over the cohort's."),
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option(help="Train new weights instead of fine-tuning the champion's.")
    ] = False,
    new_only: Annotated[
        bool,
        typer.Option(help="Train on the new cohorts alone, not also on the champion's cohort."),
    ] = False,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: the champion's).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a training setting: --set lr=1e-4 (repeatable)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted retraining.")] = False,
    allow_leakage: Annotated[
        bool,
        typer.Option(
            help="When the cohorts' own splits leak, or a patient sits in train in one "
            f"cohort and in val in another: {ALLOW_LEAKAGE}. The champion's test patients "
            "and scans stay refused."
        ),
    ] = False,
    drop_leaking_rehearsal: Annotated[
        bool,
        typer.Option(
            help="Leave out of the rehearsal the champion's training scans that would leak "
            "test data (recorded in bundle.json)."
        ),
    ] = False,
) -> None:
    """Train a challenger on new cohorts (and reviewed labels) from a champion bundle.

    Training data: the new cohorts plus the champion's own training cohort (without it,
    a model fine-tuned on a new site forgets the old one; --new-only skips it). The
    challenger keeps the champion's preprocessing, model and classes; it fine-tunes
    the champion's weights (learning rate x0.1, half the epochs, no warm-up) unless
    --from-scratch. It refuses, naming them and the cohort that holds them, any patient
    of the champion's test split or of the new cohort's test split in its training or
    validation scans, and any copy of such a test scan's pixels. When they sit in the
    champion's own training cohort (rehearsed), retrain with --new-only, or with
    --drop-leaking-rehearsal to leave them out of the rehearsal. A patient with scans in
    train and in val is refused as `medres train` refuses it, across cohorts too (e.g. a
    follow-up patient validated on in the champion's cohort, under train in the new one:
    file their new scans under the champion's split). --allow-leakage lets the cohorts'
    own leaks through as in `medres train`, never the champion's test set. Its
    bundle.json records parent_id, the lineage of cohorts and the reviews used.

    Example:

        medres retrain bundles/v1 --cohort site_b_split.parquet \\
            --reviews reviews.csv -o bundles/v2
    """
    from medres.errors import quote_some
    from medres.evaluate import metrics_table
    from medres.retrain.job import retrain_bundle

    with user_errors():
        overrides = [*(set_ or [])]
        overrides += [f"{k}={v}" for k, v in (("epochs", epochs), ("seed", seed)) if v is not None]
        result = retrain_bundle(
            bundle,
            cohort,
            out,
            reviews=reviews,
            from_scratch=from_scratch,
            new_only=new_only,
            overrides=overrides,
            resume=resume,
            allow_leakage=allow_leakage,
            drop_leaking_rehearsal=drop_leaking_rehearsal,
        )
    if drop_leaking_rehearsal:
        dropped = result.rehearsal_dropped
        console.print(
            f"left {len(dropped)} scan(s) of the champion's cohort out of the rehearsal"
            + (f": {escape(quote_some(dropped))}" if dropped else "")
        )
    if result.reviews is not None:
        r = result.reviews
        console.print(
            f"reviews: {r.changed} labels changed, {r.confirmed} confirmed, "
            f"{len(r.unmatched)} reviewed scans in no cohort (not used)"
        )
    for split, evaluation in result.evaluations.items():
        table = metrics_table(evaluation)
        table.title = f"{split}: {table.title}"
        Console().print(table)
    console.print(f"challenger: {result.bundle_json.parent}")


@app.command("compare")
def compare_command(
    champion: Annotated[Path, typer.Argument(help="The champion bundle.")],
    challenger: Annotated[Path, typer.Argument(help="The challenger bundle.")],
    cohort: Annotated[
        list[Path], typer.Option(help="New cohort whose test split to compare on; repeatable.")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report folder.")],
    old_cohort: Annotated[
        Path | None,
        typer.Option(help="The champion's test cohort (default: the one in its bundle.json)."),
    ] = None,
    margin: Annotated[
        float, typer.Option(help="AUC the challenger may lose on the old test set.")
    ] = 0.01,
    n_boot: Annotated[int, typer.Option(min=100, help="Paired bootstrap replicates.")] = 1000,
    drift: Annotated[
        bool, typer.Option(help="Add the drift report (old vs each new test set).")
    ] = True,
) -> None:
    """Compare champion and challenger on the same test scans, with a promotion verdict.

    Both bundles score the champion's test set and each new cohort's test split; AUC,
    accuracy and ECE are reported with paired bootstrap 95 % CIs of the difference
    (resampling patients). Verdict: promote when the challenger is non-inferior on the
    old test set (ΔAUC lower bound > -margin) and better on every new one (> 0). Exit
    code 0 either way; `medres promote` records the verdict.

    Example:

        medres compare bundles/v1 bundles/v2 --cohort site_b_split.parquet -o compare_v2
    """
    from medres.retrain.compare import compare_bundles, write_comparison

    with user_errors():
        comparison = compare_bundles(
            champion, challenger, cohort, old_cohort=old_cohort, margin=margin, n_boot=n_boot
        )
        report = write_comparison(comparison, out, drift=drift)
    for reason in comparison.reasons:
        console.print(reason)
    console.print(f"[bold]verdict: {comparison.verdict}[/]  report: {report}")


@app.command("promote")
def promote_command(
    comparison: Annotated[Path, typer.Argument(help="A `medres compare` report folder.")],
    registry: Annotated[Path, typer.Option(help="Registry file (created if missing).")] = Path(
        "registry.json"
    ),
    force_reason: Annotated[
        str | None,
        typer.Option(help="Promote against a 'keep' verdict; the reason is recorded."),
    ] = None,
) -> None:
    """Record a comparison's verdict in the model registry.

    A 'promote' verdict makes the challenger champion and archives the champion; 'keep'
    records the challenger as rejected and exits 1. Bundles are never copied or
    overwritten: the registry points at their folders, and every version stays loadable.

    Example:

        medres promote compare_v2 --registry models/registry.json
    """
    from rich.table import Table

    from medres.retrain.registry import promote

    with user_errors():
        entries, promoted = promote(registry, comparison, force_reason=force_reason)
    table = Table(title=f"registry {registry}")
    for column in ("id", "status", "since", "parent", "path"):
        table.add_column(column)
    for m in entries["models"].values():
        parent = (m["parent_id"] or "")[:8]
        table.add_row(m["id"][:8], m["status"], m["status_since"], parent, m["path"])
    Console().print(table)
    if not promoted:
        console.print("[bold]not promoted[/]: the comparison's verdict was 'keep'")
        raise typer.Exit(1)


@app.command("drift")
def drift_command(
    old: Annotated[Path, typer.Argument(help="Earlier cohort (.parquet), e.g. the training one.")],
    new: Annotated[Path, typer.Argument(help="Later cohort (.parquet), e.g. a new site's.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Report folder to write.")],
    bundle: Annotated[
        Path | None,
        typer.Option(help="Bundle whose confidence and OOD rate to compare on both cohorts."),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Compare only this split (train / val / test) of both.")
    ] = None,
    max_scans: Annotated[
        int, typer.Option(min=1, help="Scans read per cohort (a random sample).")
    ] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the scan sample.")] = 0,
    alpha: Annotated[
        float, typer.Option(help="Significance level: findings are the shifts with p < alpha.")
    ] = 0.01,
) -> None:
    """Compare two cohorts: label prevalence, site and modality mix, intensity statistics
    of the scans and, with --bundle, the model's confidence, OOD rate and predicted
    classes on each.

    Writes OUT/drift.md (tables, findings, plots), OUT/drift.json (the numbers),
    OUT/drift_scans.csv (one row per sampled scan) and PNG plots. Shares are compared
    by χ² tests, per-scan values by two-sample Kolmogorov–Smirnov tests, OOD rates by
    Fisher's exact test. Scans that cannot be read are counted, not fatal.

    Example:

        medres drift train.parquet site_b.parquet --bundle bundles/v1 --split test -o drift
    """
    from medres.retrain.drift import drift_report
    from medres.retrain.drift_write import write_drift

    with user_errors():
        report = drift_report(
            old,
            new,
            bundle,
            split=split,
            max_scans=max_scans,
            seed=seed,
            alpha=alpha,
            show_progress=True,
        )
        path = write_drift(report, out)
    Console().print("[bold]Drift findings[/] (α = " + f"{alpha:g})")
    for line in report.findings:
        Console().print(f"- {escape(line)}", soft_wrap=True)
    console.print(f"report: {path}  (numbers: {path.parent / 'drift.json'})")


@app.command("run")
def run_command(
    pipeline: Annotated[
        Path, typer.Argument(help="Pipeline folder with config.toml, e.g. pipelines/NAME.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(help="The pipeline's data: its file, or the folder holding it."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("-o", "--out", help="Run folder (default runs/NAME).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run in OUT, skipping finished steps.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a [train] key of every run: --set epochs=5."),
    ] = None,
) -> None:
    """Run a domain pipeline end to end: prepare the data, ingest, split, train (with
    calibration, conformal sets and OOD fitted on validation), evaluate on the test
    split, and predict the test scans as `medres predict` would.

    Writes OUT/results.md (the pipeline's results table, with the machine it ran on)
    and OUT/results.json; each step's own output sits beside them (cohort, bundle,
    report, predictions). --resume skips the steps already done. Training audits each
    run's split as `medres train` does: copies of test scans are moved into test by
    `move_copies_to_test = true` in [split]; `allow_leakage = true` there trains on a
    leaking split on purpose.

    Example:

        medres run pipelines/chest_xray_pneumonia --data ../data/pneumoniamnist.npz
        medres run pipelines/slice_triage --data ../data/medmnist -o runs/slices --resume
    """
    from medres.pipeline import load_pipeline, run_pipeline

    with user_errors():
        config, _ = load_pipeline(pipeline)
        target = out or Path("runs") / config.name
        run = run_pipeline(
            pipeline,
            data,
            target,
            resume=resume,
            overrides=set_ or [],
            log=lambda line: console.print(escape(line)),
        )
    console.print(f"results: {run.results_md} (whole run {sum(run.seconds.values()) / 60:.1f} min)")
