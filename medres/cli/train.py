"""`medres train`: a split cohort into a bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from medres.cli.common import DeviceOption, app, console, print_metrics, user_errors
from medres.errors import ALLOW_LEAKAGE


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
    device: DeviceOption = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Train with N processes on this machine: the same command under torchrun "
            "(`torchrun --standalone --nproc_per_node=N -m medres train ...`).",
        ),
    ] = None,
) -> None:
    """Train a classifier and write a bundle (weights, preprocessing, metrics, model card).

    With --cohort alone every choice comes from the cohort: 2D or 3D, channels, classes
    (two → binary, more → multiclass, non-integer numbers → regression) and a preset;
    the documented defaults (ResNet-18, AdamW 1e-3, cosine schedule, 30 epochs, an
    average of the weights, early stopping on validation AUROC) are meant to be used as
    is; --set time_limit_minutes=25 sets a time budget (none by default, so that results
    do not depend on how busy the machine is); --set class_names=0=normal,1=pneumonia
    names the classes for people (predictions, reports, the review app; default: the
    labels). The operating
    point is chosen on the validation split; the model card reports validation and test
    metrics with patient-level 95 % CIs.

    The cohort is audited before anything is trained: a patient in two splits, or a test
    scan whose pixels repeat in train or val, is refused (exit 2, naming them; `medres
    split --move-copies-to-test` fixes the copies). --allow-leakage trains anyway, for a
    deliberate experiment: bundle.json (training.leakage_allowed) and the model card's
    limitations say so. A deliberately scan-level split (`medres split --unit scan`)
    may share patients between train and val.

    --device picks where the network runs (auto: a CUDA GPU when there is one, in mixed
    precision). With several processes (--nproc N on this machine, or `torchrun
    --nproc_per_node=N -m medres train ...` on one or several nodes) each process trains
    on its own shard of the scans with DistributedDataParallel (gloo on CPUs, NCCL on
    GPUs), and rank 0 writes the bundle.

    Example:

        medres train --cohort cohort_split.parquet -o bundles/pneumonia
        medres train --cohort cohort_split.parquet --set class_names=0=normal,1=pneumonia -o b
        medres train --cohort cohort_split.parquet --device cuda --nproc 4 -o bundles/pn4
        medres train pipeline.toml --set task=ordinal --set epochs=50 -o bundles/dr
    """

    from medres.bundle import read_manifest
    from medres.config import apply_overrides, read_toml, validate
    from medres.device import resolve_device
    from medres.errors import ConfigError
    from medres.train import StopReason
    from medres.train.config import TrainConfig
    from medres.train_job import train_bundle

    if nproc is not None and "RANK" not in os.environ:
        raise typer.Exit(_under_torchrun(nproc))
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
        for key, value in (
            ("model", model),
            ("epochs", epochs),
            ("seed", seed),
            ("device", device),
        ):
            if value is not None:
                train[key] = value
        train = apply_overrides(train, set_ or [])
        settings = validate(TrainConfig, train, f"[train] settings of {config or 'command line'}")
        resolve_device(settings.device)  # an absent GPU is refused before any scan is read
        bundle_json, evaluations = train_bundle(
            cohort_path, settings, out, resume=resume, allow_leakage=allow_leakage
        )
    if bundle_json is None:  # a rank of a torchrun job other than 0: rank 0 reports
        return
    training = read_manifest(bundle_json.parent).training
    if StopReason(training.stopped_by) is StopReason.TIME_LIMIT:
        console.print(
            f"[yellow]training reached its {settings.time_limit_minutes:g}-minute limit after "
            f"{training.epochs_run} of {settings.epochs} epochs[/] (the best of them is "
            "bundled); --set time_limit_minutes=0 lifts the limit"
        )
    print_metrics(evaluations)
    console.print(f"bundle: {bundle_json.parent}  (model card: {bundle_json.parent}/model_card.md)")


def _under_torchrun(nproc: int) -> int:
    """Run this same ``medres train`` command (without ``--nproc``) under torch's elastic
    launcher with ``nproc`` processes; returns its exit code."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return subprocess.call([*launch, f"--nproc_per_node={nproc}", "-m", "medres", *args])
