"""Training speed: ``medres train`` vs a plain MONAI-tutorial-style loop, images/s.

Cases (``--cases``): PneumoniaMNIST at 28² (``pneumonia28``), the same images resized
to 224² by medres's preset (``pneumonia224``: ``--set preprocess.spatial_size=[224,224]``;
the baseline resizes with MONAI ``Resize`` to 224² too) and AdrenalMNIST3D at 64³
(``adrenal64``). For each case a fixed subset is exported once under ``--work`` with
``medres datasets medmnist --splits train,val --per-class N`` (the official split kept),
the validation part cut to ``VAL_PER_CLASS`` images per class so validation barely
counts, then ``medres ingest`` and ``medres split --keep-column split``.

Per case and per process count (``--nproc``), in one run and back to back:

(baseline) a plain loop in this process, no medres except the model: the exported
    files through ``LoadImage`` + ``EnsureChannelFirst`` + ``ScaleIntensity`` (+
    ``Resize`` for 224²) cached by ``monai.data.CacheDataset``, then random (3D:
    ``RandFlip`` on each axis) ``RandAffine`` / ``RandScaleIntensity`` /
    ``RandShiftIntensity`` with medres's default augmentation; ``monai.data.DataLoader``
    (batch 64, 0 workers, shuffled); the model ``medres.models.create_model`` builds for
    ``medres train`` (same name and arguments: ResNet-18, dropout 0.2, the automatic
    stem stride); AdamW (1e-3, weight decay 1e-4), ``CrossEntropyLoss``, fp32, default
    memory layout; one warm-up epoch, then ``--timed-epochs`` (2) timed epochs.
(medres) ``medres train --epochs 3 --set num_workers=0 --set time_limit_minutes=0 --set
    precision=fp32 --device D``, as one process or under ``python -m
    torch.distributed.run --standalone --nproc_per_node=N`` (the batch of 64 shared by the
    ranks), launched through this script's ``_timed`` mode, which runs the ``medres``
    command line unchanged and only records how long each call of ``train_one_epoch``
    took. Epoch 1 is the warm-up. Two numbers for the timed epochs: the training pass
    alone (train images / rank 0's ``train_one_epoch`` seconds: the comparable number)
    and the whole epoch from ``metrics.csv`` (which also recomputes the averaged
    weights' batch-norm statistics over up to 512 training images and validates the
    small val split).

Each side keeps its best timed epoch. Ratios are medres / the baseline measured right
before it in the same run (the machines are shared and noisy). Each baseline + medres
pair starts after waiting up to ``--wait-quiet`` seconds for a quiet machine, and every
measurement records the share of the CPU other processes took meanwhile. Writes
``benchmarks/results/train_speed.md``.

Usage::

    python benchmarks/train_speed.py                                  # CPU, 1 and 2 processes
    python benchmarks/train_speed.py --cases pneumonia28 --scale 0.1 --nproc 1 --wait-quiet 0
    python benchmarks/train_speed.py --device cuda --scale 8 --torchrun-one   # on a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/...`
from benchmarks.predict_speed import QUIET, OtherLoad

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "medmnist"
VAL_PER_CLASS = 16  # validation images per class: validation barely counts in an epoch
BATCH = 64  # medres train's default batch (shared by the ranks under torchrun)
TIMINGS_ENV = "MEDRES_BENCH_TIMINGS"

# name -> (npz file, spatial size, default train images (×--scale), extra `medres train` args)
CASES = {
    "pneumonia28": ("pneumoniamnist.npz", (28, 28), 1024, []),
    "pneumonia224": (
        "pneumoniamnist.npz",
        (224, 224),
        256,
        ["--set", "preprocess.spatial_size=[224,224]"],
    ),
    "adrenal64": ("adrenalmnist3d_64.npz", (64, 64, 64), 128, []),
}


# ---------------------------------------------------------------- the `_timed` mode


def timed_medres(args: list[str]) -> None:
    """``medres ARGS`` with every ``train_one_epoch`` call timed (seconds appended as
    one line to ``$MEDRES_BENCH_TIMINGS.<rank>``); nothing else changes."""
    import torch

    import medres.train.loop as loop

    original = loop.train_one_epoch
    path = Path(f"{os.environ[TIMINGS_ENV]}.{os.environ.get('RANK', '0')}")

    def sync(device) -> None:
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    def train_one_epoch(*a, **k):
        sync(k.get("device"))
        start = time.perf_counter()
        result = original(*a, **k)
        sync(k.get("device"))
        with path.open("a") as f:
            f.write(f"{time.perf_counter() - start}\n")
        return result

    loop.train_one_epoch = train_one_epoch
    from medres.cli import main as medres_main

    sys.argv = ["medres", *args]
    medres_main()


# ---------------------------------------------------------------- data


def medres_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "medres", *args], check=True)


def prepare(case: str, data: Path, work: Path, n_train: int) -> Path:
    """Export (train: ``n_train / 2`` per class, val: ``VAL_PER_CLASS`` per class), ingest
    and split (official split kept) once; returns the split cohort."""
    npz = data / CASES[case][0]
    root = work / f"{case}-{n_train}"
    cohort = root / "cohort_split.parquet"
    if cohort.is_file():
        return cohort
    shutil.rmtree(root, ignore_errors=True)
    scans = root / "scans"
    per_class = max(n_train // 2, VAL_PER_CLASS)
    medres_cli(
        "datasets", "medmnist", str(npz), "-o", str(scans), "--splits", "train,val",
        "--per-class", str(per_class),
    )  # fmt: skip
    labels = scans / "labels.csv"
    with labels.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept, seen = [], {}
    for row in rows:  # the first VAL_PER_CLASS of each class in val; every train row
        if row["split"] == "val":
            key = row["label"]
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > VAL_PER_CLASS:
                (scans / row["path"]).unlink()
                continue
        kept.append(row)
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    medres_cli("ingest", str(scans), "--labels", str(labels), "-o", str(root / "cohort.parquet"))
    medres_cli("split", str(root / "cohort.parquet"), "--keep-column", "split", "-o", str(cohort))
    return cohort


def train_rows(cohort: Path) -> list[dict]:
    """The exported training files and labels (what the baseline reads)."""
    with (cohort.parent / "scans" / "labels.csv").open(newline="") as f:
        return [
            {"image": str(cohort.parent / "scans" / r["path"]), "label": int(r["label"])}
            for r in csv.DictReader(f)
            if r["split"] == "train"
        ]


# ---------------------------------------------------------------- the two measurements


def baseline(case: str, cohort: Path, device: str, timed: int) -> dict:
    """The plain loop: one warm-up epoch, then ``timed`` timed epochs (seconds each)."""
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandAffined,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        Resized,
        ScaleIntensityd,
    )

    from medres.models import create_model
    from medres.train.steps import auto_stem_stride

    size = CASES[case][1]
    dims = len(size)
    rows = train_rows(cohort)
    steps = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image")]
    steps.append(ScaleIntensityd("image"))
    if case == "pneumonia224":
        steps.append(Resized("image", size, mode="bilinear"))
    if dims == 3:  # medres's 3D presets flip every axis at random; xray_2d none
        steps += [RandFlipd("image", prob=0.5, spatial_axis=axis) for axis in range(3)]
    steps += [
        RandAffined(
            "image",
            prob=0.5,
            rotate_range=[np.deg2rad(10.0)] * (1 if dims == 2 else 3),
            scale_range=[0.1] * dims,
            translate_range=[0.05 * s for s in size],
            padding_mode="border",
        ),
        RandScaleIntensityd("image", 0.1, prob=0.5),
        RandShiftIntensityd("image", 0.1, prob=0.5),
    ]
    torch.manual_seed(0)
    dataset = CacheDataset(rows, Compose(steps), progress=False, num_workers=1)
    dev = torch.device(device)
    loader = DataLoader(
        dataset, batch_size=BATCH, shuffle=True, num_workers=0, pin_memory=dev.type == "cuda"
    )
    args = {
        "in_channels": 1,
        "num_classes": 2,
        "spatial_dims": dims,
        "dropout": 0.2,
        "stem_stride": auto_stem_stride(size),
    }
    model = create_model("resnet18", **args).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch() -> float:
        model.train()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        start = time.perf_counter()
        for batch in loader:
            images = batch["image"].as_tensor().to(dev, non_blocking=True)
            labels = batch["label"].to(dev, non_blocking=True)
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    with OtherLoad() as load:
        warm = epoch()
        seconds = [epoch() for _ in range(timed)]
    return {
        "images": len(rows),
        "warmup_s": warm,
        "epochs_s": seconds,
        "seconds": min(seconds),
        "model_args": args,
        "other_load": load.share,
    }


def run_medres(
    case: str, cohort: Path, device: str, nproc: int, torchrun: bool, out: Path, timed: int
) -> dict:
    """``medres train`` for ``1 + timed`` epochs (timed mode); the training-pass and
    whole-epoch seconds of the timed epochs, and the number of training images."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timings = out / "timings"
    train = [
        "train", "--cohort", str(cohort), "--epochs", str(1 + timed), "--set", "num_workers=0",
        "--set", "time_limit_minutes=0", "--set", "precision=fp32", "--device", device,
        *CASES[case][3], "-o", str(out / "bundle"),
    ]  # fmt: skip
    script = [str(Path(__file__).resolve()), "_timed"]
    if torchrun:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launch, f"--nproc_per_node={nproc}", *script, *train]
    else:
        command = [sys.executable, *script, *train]
    env = {**os.environ, TIMINGS_ENV: str(timings)}
    start = time.perf_counter()
    with OtherLoad() as load:  # the subprocess's CPU time counts as ours once waited for
        subprocess.run(command, check=True, env=env)
    wall = time.perf_counter() - start
    passes = [float(x) for x in Path(f"{timings}.0").read_text().split()]
    with (out / "bundle" / "metrics.csv").open(newline="") as f:
        history = list(csv.DictReader(f))
    bundle = json.loads((out / "bundle" / "bundle.json").read_text())
    return {
        "images": len(train_rows(cohort)),
        "warmup_train_s": passes[0],
        "passes_s": passes[1:],
        "epochs_s": [float(row["seconds"]) for row in history[1:]],
        "train_s": min(passes[1:]),
        "epoch_s": min(float(row["seconds"]) for row in history[1:]),
        "val_scans": int(history[-1]["val_scans"]),
        "wall_s": wall,
        "other_load": load.share,
        "model_args": bundle["model"]["args"],
        "spatial_size": bundle["preprocess"].get("spatial_size"),
    }


# ---------------------------------------------------------------- report


def machine(device: str) -> str:
    import torch

    from medres.pipeline.results import machine as medres_machine

    line = medres_machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return line


def write_markdown(rows: list[dict], out: Path, context: dict) -> str:
    lines = [
        "# Training speed: `medres train` vs a plain MONAI loop",
        "",
        f"Machine: {context['machine']}.",
        f"Command: `{context['command']}` ({context['minutes']:.1f} min; 1-min load average "
        f"{context['load']:.2f} at the start).",
        "",
        " ".join(
            [
                "images/s of one training epoch: epoch 1 is a warm-up, then the best of",
                f"{context['timed']} timed epochs on each side.",
                "The baseline is a plain MONAI-tutorial-style loop in the benchmark's",
                "process: `LoadImage` → `EnsureChannelFirst` → `ScaleIntensity` (→ `Resize`",
                "224²) cached by `monai.data.CacheDataset`, then (3D: `RandFlip` on each",
                "axis) `RandAffine`, `RandScaleIntensity` and `RandShiftIntensity` with",
                "medres's default probabilities and ranges;",
                "`monai.data.DataLoader`, batch 64, 0 workers; the model",
                "`medres.models.create_model` builds for the same run (ResNet-18, the same",
                "arguments: column `model`); AdamW 1e-3, `CrossEntropyLoss`, fp32, default",
                "memory layout; one process, torch's default threads. It is measured right",
                "before each medres run, and ratio = medres / that baseline.",
                f"medres: `medres train --epochs {1 + context['timed']} --set num_workers=0",
                "--set time_limit_minutes=0 --set precision=fp32 --device D`, one process or",
                "under `torch.distributed.run --nproc_per_node=N` (batch 64 shared by the",
                "ranks; torchrun gives each CPU process 1 thread unless OMP_NUM_THREADS is",
                "set). *train pass* = train images / rank 0's `train_one_epoch` seconds: the",
                "baseline's work plus what medres adds to a step (channels-last layout, the",
                "weight average updated after every step, gradient all-reduce under",
                "torchrun). *whole epoch* = train images / the epoch's `metrics.csv` seconds,",
                "which also recompute the averaged weights' batch-norm statistics over up to",
                f"512 training images and validate {2 * VAL_PER_CLASS} val images.",
                "The machine is shared: each baseline + medres pair starts after waiting",
                f"(up to {context['wait_quiet']:g} s) for other processes to take < {QUIET:.0%}",
                "of the CPU, and the list below the table gives every measurement and the",
                "share of the CPU other processes took meanwhile.",
            ]
        ),
        "",
        "| case | size | train images | device | processes | baseline img/s | medres img/s "
        "(train pass) | ratio | medres img/s (whole epoch) | ratio | model |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, m = r["baseline"], r["medres"]
        base = b["images"] / b["seconds"]
        train = m["images"] / m["train_s"]
        whole = m["images"] / m["epoch_s"]
        size = "×".join(map(str, CASES[r["case"]][1]))
        args = m["model_args"]
        model = f"stem_stride {args.get('stem_stride')}, dropout {args.get('dropout')}"
        lines.append(
            f"| {r['case']} | {size} | {m['images']} | {r['device']} | {r['label']} | "
            f"{base:.1f} | {train:.1f} | {train / base:.2f} | {whole:.1f} | "
            f"{whole / base:.2f} | {model} |"
        )
    lines += [
        "",
        "Seconds (baseline: warm-up epoch / timed epochs, other processes' CPU share; "
        "medres: epoch-1 train pass / timed train passes / timed whole epochs / wall time "
        "of the whole `medres train` with caching, trust fit and evaluations, other "
        "processes' CPU share over it):",
        "",
    ]
    for r in rows:
        b, m = r["baseline"], r["medres"]
        lines.append(
            f"- {r['case']} {r['device']} {r['label']}: baseline {b['warmup_s']:.1f} / "
            f"{_seconds(b['epochs_s'])}, {b['other_load']:.0%}; medres "
            f"{m['warmup_train_s']:.1f} / {_seconds(m['passes_s'])} / {_seconds(m['epochs_s'])}"
            f" / {m['wall_s']:.1f}, {m['other_load']:.0%}"
        )
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def wait_quiet(seconds: float) -> float:
    """Wait up to ``seconds`` for a 2-second window in which other processes take less
    than ``QUIET`` of the CPU; returns the last window's share."""
    deadline, share = time.monotonic() + seconds, 0.0
    while time.monotonic() < deadline:
        with OtherLoad() as idle:
            time.sleep(2)
        share = idle.share
        if share < QUIET:
            break
    return share


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_timed":
        timed_medres(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--nproc",
        default=None,
        help="comma-separated process counts; 1 = a plain process, N > 1 = torchrun "
        "(default: 1,2 on cpu, 1 on cuda)",
    )
    parser.add_argument(
        "--torchrun-one", action="store_true", help="also run torchrun with 1 process"
    )
    parser.add_argument(
        "--timed-epochs", type=int, default=2, help="epochs timed after the warm-up (best kept)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=60,
        help="seconds to wait, before each baseline + medres pair, for a quiet machine",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the train sizes")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the .npz")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-train-speed"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_speed.md")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"MedMNIST files not found under {args.data}")
    nprocs = [int(n) for n in (args.nproc or ("1" if args.device != "cpu" else "1,2")).split(",")]
    runs = [(n, n > 1, "1" if n == 1 else f"torchrun {n}") for n in nprocs]
    if args.torchrun_one:
        runs.append((1, True, "torchrun 1"))
    context = {
        "load": os.getloadavg()[0],
        "machine": machine(args.device),
        "timed": args.timed_epochs,
        "wait_quiet": args.wait_quiet,
    }
    start = time.perf_counter()
    rows = []
    for case in args.cases:
        n_train = max(2 * VAL_PER_CLASS, round(CASES[case][2] * args.scale))
        cohort = prepare(case, args.data, args.work, n_train)
        for nproc, torchrun, label in runs:
            wait_quiet(args.wait_quiet)
            print(f"\n== {case} {args.device} {label}: baseline", flush=True)
            base = baseline(case, cohort, args.device, args.timed_epochs)
            print(f"== {case} {args.device} {label}: medres train", flush=True)
            out = args.work / "runs" / f"{case}-{args.device}-{label.replace(' ', '')}"
            med = run_medres(case, cohort, args.device, nproc, torchrun, out, args.timed_epochs)
            size, model = tuple(med["spatial_size"]), med["model_args"]
            if size != CASES[case][1] or model != base["model_args"]:
                sys.exit(f"medres trained {size} with {model}; the baseline {base['model_args']}")
            rows.append(
                {"case": case, "device": args.device, "label": label, "baseline": base,
                 "medres": med}
            )  # fmt: skip
            context["minutes"] = (time.perf_counter() - start) / 60
            context["command"] = " ".join(
                ["python benchmarks/train_speed.py", *map(shlex.quote, sys.argv[1:])]
            )
            text = write_markdown(rows, args.out, context)
    print(text)


if __name__ == "__main__":
    main()
