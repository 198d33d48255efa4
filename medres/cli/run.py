"""`medres run`: a domain pipeline end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medres.cli.common import DeviceOption, app, check_device, console, user_errors


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
    device: DeviceOption = None,
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
        check_device(device)
        config, _ = load_pipeline(pipeline)
        target = out or Path("runs") / config.name
        run = run_pipeline(
            pipeline,
            data,
            target,
            resume=resume,
            overrides=[*(set_ or []), *([f"device={device}"] if device else [])],
            log=lambda line: console.print(escape(line)),
        )
    console.print(f"results: {run.results_md} (whole run {sum(run.seconds.values()) / 60:.1f} min)")
