"""`medres predict`: a bundle over a folder of scans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from medres.cli.common import DeviceOption, app, console, progress_columns, user_errors


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
        int | None,
        typer.Option(
            help="--engine local: processes decoding scans (default: 2 on 2+ cores). "
            "--engine ray: actors running the model (default: one per node; a node's "
            "actors share its CPUs but one, left to the tasks reading scans)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Scans per forward pass.")] = 32,
    chunk_size: Annotated[
        int, typer.Option(help="Rows per crash-safe chunk (an interruption loses at most one).")
    ] = 256,
    flag_below: Annotated[
        float | None,
        typer.Option(help="Regression QA gate: refer scans predicted below this value."),
    ] = None,
    device: DeviceOption = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="What runs the network: torch (the bundle's weights), onnx or openvino "
            "(the network compiled for ONNX Runtime or OpenVINO on the CPU; `medres export "
            "BUNDLE --runtime onnx|openvino` first), onnx-int8 or openvino-int8 (quantised, "
            "with its own refitted trust layer; `medres export ... --int8` first). Grad-CAM "
            "uses the torch weights either way."
        ),
    ] = "torch",
    engine: Annotated[
        str,
        typer.Option(
            help="local (this machine) or ray (a Ray cluster: scans read by tasks, the model "
            'in a pool of actors; `pip install "medres[ray]"`). Same output folder either way.'
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster to join, as `ray start --head` printed it "
            "(default: a local cluster that starts and stops with the command)."
        ),
    ] = None,
    gpus_per_worker: Annotated[
        float, typer.Option(help="--engine ray: GPUs each actor holds (0: CPUs only).")
    ] = 0.0,
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
        medres predict bundles/pneumonia /data/tonight -o predictions/tonight --runtime onnx
        medres predict bundles/pneumonia /archive -o predictions/archive --engine ray \\
            --address 10.0.0.5:6379 --runtime openvino-int8
    """
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
        device=device or "auto",
        runtime=runtime,
        engine=engine,
        address=address,
        gpus_per_worker=gpus_per_worker,
    )
    columns = progress_columns(scans_per_second=True, time_remaining=True)
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
