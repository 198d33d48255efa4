"""Batch prediction speed: ``medres predict`` vs a naive per-file loop vs the model alone.

Two folders are built once under ``--work`` (reused when already there):

- ``pneumonia224/scans``: PneumoniaMNIST chest X-rays (training split, shuffled) upsampled
  28 → 224 px (PIL bilinear), 8-bit grey PNG;
- ``adrenal64/export/test``: the AdrenalMNIST3D 64³ test split as ``.nii.gz`` (identity
  affine, 1 mm) from ``medres datasets medmnist``.

Each gets a bundle trained for one epoch through the medres CLI on a small labelled set of
the same kind of images (other MedMNIST images; accuracy is irrelevant here, the
bundle's preprocessing spec — 224² / 64³ — is what matters). Then, in one process and
one run, with the same bundle, batch size and scans:

(a) model only: the bundle's model (eval, ``no_grad``, channels-last, the precision
    ``medres predict`` would pick) on preprocessed tensors already in memory;
(b) naive loop: one file at a time, MONAI ``LoadImage`` + the bundle's own
    ``build_transform(spec)`` + the model on a batch of 1;
(c) ``medres.predict.predict_folder`` with default options and with ``workers`` 0, 1, 2
    (a fresh output folder each time): scans/s over the whole call (bundle loading,
    discovery, writing the tables included) and run.json's ``scans_per_second``
    (prediction phase only).

Writes ``benchmarks/results/predict_speed.md``.

Usage::

    python benchmarks/predict_speed.py
    python benchmarks/predict_speed.py --folders adrenal64 --workers 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/...`
from benchmarks.medmnist import SHARED
from benchmarks.medmnist import machine as medmnist_machine

HERE = Path(__file__).resolve().parent
MEDMNIST = SHARED / "medmnist"
TARGET_NAIVE = 3.0  # (c) must be at least this many times (b)
TARGET_MODEL = 0.70  # (c) must reach this share of (a)
QUIET = 0.05  # a round counts as quiet when other processes took less than this CPU share


class OtherLoad:
    """Context manager: the share of the machine's CPU time that processes other than
    this one and its (finished) children used meanwhile, from ``/proc/stat`` and
    ``getrusage``. The machine is shared, so every round says how quiet it was."""

    def __enter__(self) -> OtherLoad:
        self.start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
        other = (busy - self.start[1]) - (own - self.start[2])
        self.share = max(0.0, other) / ((wall - self.start[0]) * (os.cpu_count() or 1))


def quiet_attempts(measure, wait_s: float, retries: int) -> list[tuple]:
    """Run ``measure()`` (returning a tuple of numbers) when the machine is quiet: wait up
    to ``wait_s`` for a 2-second window in which other processes take < QUIET of the CPU,
    then measure; a measurement disturbed anyway is repeated up to ``retries`` times.
    Returns every attempt, each tuple ending with the other processes' CPU share."""
    attempts = []
    for _ in range(1 + retries):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with OtherLoad() as idle:
                time.sleep(2)
            if idle.share < QUIET:
                break
        with OtherLoad() as load:
            values = measure()
        attempts.append((*values, load.share))
        if load.share < QUIET:
            break
    return attempts


def _busy_seconds() -> float:
    """CPU seconds every process of the machine has used (user, nice, system, irq)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields)
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and its children already waited for (the DataLoader
    workers of a finished ``predict_folder`` call)."""
    me, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Folder:
    """One benchmark folder: the scans to predict and the bundle that predicts them."""

    name: str
    scans: Path
    bundle: Path
    size: tuple[int, ...]


def medres_cli(*args: str) -> None:
    """Run one ``medres`` command in a subprocess (as a user would)."""
    subprocess.run([sys.executable, "-m", "medres", *args], check=True)


def train_bundle(labelled: Path, bundle: Path) -> None:
    """ingest → split (kept) → train one epoch; skipped when ``bundle`` already exists."""
    if (bundle / "bundle.json").is_file():
        return
    cohort, split = bundle.parent / "cohort.parquet", bundle.parent / "cohort_split.parquet"
    medres_cli("ingest", str(labelled), "--labels", str(labelled / "labels.csv"), "-o", str(cohort))
    medres_cli("split", str(cohort), "--keep-column", "split", "-o", str(split))
    shutil.rmtree(bundle, ignore_errors=True)
    medres_cli("train", "--cohort", str(split), "--epochs", "1", "-o", str(bundle))


def _write_png_224(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).resize((224, 224), Image.BILINEAR).save(path, format="PNG")


def build_pneumonia(work: Path, n_scans: int, n_train: int, n_val: int) -> Folder:
    """PneumoniaMNIST at 224 px: ``n_scans`` PNGs to predict, plus a disjoint labelled set
    (``n_train`` + ``n_val`` PNGs and labels.csv with a split column) for the bundle."""
    root = work / "pneumonia224"
    scans, labelled = root / "scans", root / "labelled"
    marker = root / "built.json"
    wanted = {"n_scans": n_scans, "n_train": n_train, "n_val": n_val}
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(root, ignore_errors=True)
        data = np.load(MEDMNIST / "pneumoniamnist.npz")
        images, labels = data["train_images"], data["train_labels"][:, 0]
        if n_scans + n_train + n_val > len(images):
            sys.exit(f"PneumoniaMNIST's training split has only {len(images)} images")
        order = np.random.default_rng(0).permutation(len(images))  # the split is class-sorted
        scans.mkdir(parents=True)
        for i in order[:n_scans]:
            _write_png_224(images[i], scans / f"pneumonia_{i:05d}.png")
        rows = ["path,label,split"]
        chosen = order[n_scans : n_scans + n_train + n_val]
        for k, i in enumerate(chosen):
            split = "train" if k < n_train else "val"
            (labelled / split).mkdir(parents=True, exist_ok=True)
            _write_png_224(images[i], labelled / split / f"{i:05d}.png")
            rows.append(f"{split}/{i:05d}.png,{labels[i]},{split}")
        (labelled / "labels.csv").write_text("\n".join(rows) + "\n")
        marker.write_text(json.dumps(wanted))
    train_bundle(labelled, root / "bundle")
    return Folder("pneumonia224 (2D PNG, 224²)", scans, root / "bundle", (224, 224))


def build_adrenal(work: Path, per_class: int) -> Folder:
    """AdrenalMNIST3D 64³: the official test split to predict (``medres datasets
    medmnist``, .nii.gz, identity affine) and a bundle trained on ``per_class`` volumes
    of each class from the train and val splits."""
    root = work / "adrenal64"
    npz = MEDMNIST / "adrenalmnist3d_64.npz"
    export, labelled = root / "export", root / "labelled"
    if not (export / "labels.csv").is_file():
        medres_cli("datasets", "medmnist", str(npz), "-o", str(export), "--splits", "test")
    if not (labelled / "labels.csv").is_file():
        medres_cli(
            "datasets", "medmnist", str(npz), "-o", str(labelled), "--splits", "train,val",
            "--per-class", str(per_class),
        )  # fmt: skip
    train_bundle(labelled, root / "bundle")
    return Folder("adrenal64 (3D NIfTI, 64³)", export / "test", root / "bundle", (64, 64, 64))


def predict_precision(bundle) -> str:
    """The precision ``medres predict`` uses for this bundle on this CPU."""
    from medres.predict.predictor import predict_precision as rule

    return rule(torch.device("cpu"), bundle.config.precision)


def memory_format(dims: int) -> torch.memory_format:
    """channels_last in 2D, channels_last_3d in 3D (as ``medres predict``)."""
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def preprocessed(files: list[Path], spec) -> tuple[list[torch.Tensor], float]:
    """Every file read with ``medres.io.read_scan`` and put through the bundle's
    transform with one torch thread (as in a DataLoader worker); returns the tensors
    and the seconds this took."""
    from medres.io import read_scan
    from medres.transforms import build_transform

    transform = build_transform(spec)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        tensors = [transform(read_scan(f)) for f in files]
        return tensors, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def stacked(bundle, tensors: list[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """The tensors as batches, stacked and in the channels-last layout, in memory."""
    layout = memory_format(bundle.spec.spatial_dims)
    return [
        torch.stack(tensors[i : i + batch_size]).contiguous(memory_format=layout)
        for i in range(0, len(tensors), batch_size)
    ]


def model_only(bundle, batches: list[torch.Tensor]) -> float:
    """(a) Seconds for the model over ``batches`` (eval, ``no_grad``, channels-last, the
    precision ``medres predict`` picks), after one untimed warm-up batch."""
    model = bundle.model.eval().to(memory_format=memory_format(bundle.spec.spatial_dims))
    bf16 = predict_precision(bundle) == "bf16"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(batches[0])
        start = time.perf_counter()
        for batch in batches:
            model(batch).float().softmax(1)
        return time.perf_counter() - start


def naive_loop(bundle, files: list[Path]) -> tuple[float, str]:
    """(b) Seconds for one file at a time: MONAI ``LoadImage`` + the bundle's transform +
    the model on a batch of 1. Returns the seconds and how the files were read.

    ``build_transform`` takes a medres ``Volume`` (``.array``, ``.affine``, ``.meta``);
    a MONAI ``MetaTensor`` has the same three attributes, so LoadImage's output is given
    to it directly when, on the first file, that gives the same tensor as
    ``medres.io.read_scan``; otherwise ``read_scan`` reads the files and the notes say so.
    """
    from monai.transforms import LoadImage

    from medres.io import read_scan
    from medres.transforms import build_transform

    transform = build_transform(bundle.spec)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    try:
        same = torch.allclose(transform(load(str(files[0]))), transform(read_scan(files[0])))
    except Exception:  # any failure means: fall back to read_scan
        same = False
    read, how = (
        (lambda f: load(str(f)), "MONAI LoadImage(image_only=True, ensure_channel_first=True)")
        if same
        else (read_scan, "medres.io.read_scan (the transform refused LoadImage's MetaTensor)")
    )
    layout = memory_format(bundle.spec.spatial_dims)
    model = bundle.model.eval().to(memory_format=layout)
    with torch.no_grad():

        def one(path: Path) -> int:
            image = transform(read(path))[None].contiguous(memory_format=layout)
            return int(model(image).softmax(1).argmax(1))

        one(files[0])  # warm-up: batch-1 kernels
        start = time.perf_counter()
        for path in files:
            one(path)
        return time.perf_counter() - start, how


def predict_run(folder: Folder, out: Path, workers: int | None, batch_size: int) -> dict:
    """(c) One ``predict_folder`` call into a fresh ``out``; returns its run.json and the
    call's wall time (``wall_s``)."""
    from medres.predict.job import PredictOptions, predict_folder

    shutil.rmtree(out, ignore_errors=True)
    options = PredictOptions(workers=workers, batch_size=batch_size)
    start = time.perf_counter()
    run = predict_folder(folder.bundle, folder.scans, out, options)
    wall = time.perf_counter() - start
    counts = run.summary["counts"]
    if counts["failed"] or counts["predicted_now"] != counts["scans"]:
        sys.exit(f"predict on {folder.scans} did not predict every scan: {counts}")
    return {**run.summary, "wall_s": wall}


def measure(folder: Folder, args: argparse.Namespace) -> dict:
    """Every measurement for one folder, in one process: ``--repeats`` interleaved rounds
    of (a), (b), then (c) per worker setting. Returns scans/s of every round."""
    from medres.bundle import load_bundle
    from medres.io import discover
    from medres.predict.job import default_workers

    bundle = load_bundle(folder.bundle)
    size = tuple(bundle.spec.spatial_size)
    if size != folder.size:
        sys.exit(f"{folder.bundle} preprocesses to {size}, expected {folder.size}")
    files = [Path(s.files[0]) for s in discover(folder.scans).scans]
    n = len(files)
    print(f"\n== {folder.name}: {n} scans, bundle {folder.bundle}", flush=True)

    def attempts(measure) -> list[tuple]:
        return quiet_attempts(measure, args.wait_quiet, args.retries)

    inputs: dict[str, list[torch.Tensor]] = {}

    def prep() -> tuple[float]:
        tensors, seconds = preprocessed(files, bundle.spec)
        inputs["batches"] = stacked(bundle, tensors, args.batch_size)
        return (n / seconds,)

    prep_attempts = attempts(prep)
    batches = inputs.pop("batches")
    naive_files = files[: args.naive_limit] if bundle.spec.spatial_dims == 2 else files
    default = default_workers()
    settings = {f"default (workers={default})": None}
    settings |= {f"workers={w}": w for w in args.workers if w != default}
    result = {
        "name": folder.name,
        "n": n,
        "bundle": bundle,
        "precision": predict_precision(bundle),
        "prep": prep_attempts,
        "naive_n": len(naive_files),
        "a": [],
        "b": [],
        "c": {label: [] for label in settings},
        "same_as_default": [w for w in args.workers if w == default],
    }

    def naive() -> tuple[float]:
        seconds, result["naive_how"] = naive_loop(bundle, naive_files)
        return (len(naive_files) / seconds,)

    def predict(workers: int | None) -> tuple[float, float]:
        out = args.work / "out" / f"{folder.bundle.parent.name}-{workers}"
        run = predict_run(folder, out, workers, args.batch_size)
        return n / run["wall_s"], run["scans_per_second"]

    for round_ in range(1, args.repeats + 1):
        result["a"] += attempts(lambda: (n / model_only(bundle, batches),))
        result["b"] += attempts(naive)
        print(f"round {round_}: (a) {result['a'][-1][0]:.1f}, (b) {result['b'][-1][0]:.1f}", end="")
        for label, workers in settings.items():
            result["c"][label] += attempts(lambda w=workers: predict(w))
            print(f", (c) {label} {result['c'][label][-1][0]:.1f}", end="", flush=True)
        print(" scans/s")
    return result


def machine() -> str:
    """medmnist's machine line plus what matters for overlapping decoding and the model."""
    return (
        f"{medmnist_machine()}; the torch threads are the main process's (DataLoader "
        f"workers run 1 each); CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )


def _verdict(ok: bool) -> str:
    return "**holds**" if ok else "**missed**"


def best(rounds: list[tuple], i: int = 0) -> float:
    """The best value ``i`` of the rounds where the machine was quiet (all rounds when
    none was); the last item of a round is the other processes' CPU share."""
    quiet = [r for r in rounds if r[-1] < QUIET] or rounds
    return max(r[i] for r in quiet)


def _rounds(rounds: list[tuple], i: int = 0) -> str:
    return ", ".join(f"{r[i]:.1f} ({r[-1]:.0%})" for r in rounds)


def folder_lines(r: dict, batch_size: int) -> list[str]:
    """The markdown table and target verdicts of one folder (best quiet round)."""
    a, b = best(r["a"]), best(r["b"])
    cores = os.cpu_count() or 1
    prep = best(r["prep"])
    ceiling = cores / (cores / a + 1 / prep)
    spec, manifest = r["bundle"].spec, r["bundle"].manifest
    lines = [
        f"## {r['name']}",
        "",
        f"{r['n']} scans; bundle preprocessing `{spec.preset}` → "
        f"{'×'.join(map(str, spec.spatial_size))}, model `{manifest.model.name}` "
        f"stem_stride {manifest.model.args.get('stem_stride')}, precision "
        f"{r['precision']}, batch {batch_size}. Reading + preprocessing alone (`read_scan` + "
        f"transform, one thread as in a DataLoader worker): {prep:.1f} scans/s "
        f"({_rounds(r['prep'])}).",
        "",
        "| measure | scans | scans/s (best) | every attempt (other processes' CPU share) "
        "| (c)/(b) | (c)/(a) |",
        "|---|---|---|---|---|---|",
        f"| (a) model only, tensors in memory | {r['n']} | {a:.1f} | {_rounds(r['a'])} | | |",
        f"| (b) naive loop, batch 1 | {r['naive_n']} | {b:.1f} | {_rounds(r['b'])} | | |",
        f"| ceiling for (c) on {cores} cores, computed: {cores} / ({cores}/(a) + 1/prep) "
        f"| | {ceiling:.1f} | | {ceiling / b:.2f}× | {ceiling / a:.0%} |",
    ]
    for label, rounds in r["c"].items():
        for i, what in enumerate(("whole call", "run.json prediction phase")):
            c = best(rounds, i)
            lines.append(
                f"| (c) `predict_folder` {label}, {what} | {r['n']} | {c:.1f} "
                f"| {_rounds(rounds, i)} | {c / b:.2f}× | {c / a:.0%} |"
            )
    default_label = next(iter(r["c"]))
    default = best(r["c"][default_label])
    best_label = max(r["c"], key=lambda k: best(r["c"][k]))
    fastest = best(r["c"][best_label])
    naive_note = f"(b) reads files with {r['naive_how']}"
    if r["naive_n"] < r["n"]:
        naive_note += f"; timed on the first {r['naive_n']} files"
    if r["same_as_default"]:
        naive_note += f". workers={r['same_as_default'][0]} is the default here: see its rows"
    lines += [
        "",
        naive_note + ".",
        "",
        f"- (c) ≥ {TARGET_NAIVE:.0f}× (b), default options, whole call: "
        f"{_verdict(default >= TARGET_NAIVE * b)} ({default / b:.2f}×).",
        f"- (c) ≥ {TARGET_MODEL:.0%} of (a), default options, whole call: "
        f"{_verdict(default >= TARGET_MODEL * a)} ({default / a:.0%}).",
        f"- Fastest setting (whole call): {best_label}, {fastest:.1f} scans/s "
        f"({fastest / b:.2f}× (b), {fastest / a:.0%} of (a)).",
        "",
    ]
    return lines


def code_state() -> str:
    """The medres commit measured, and any uncommitted change to medres/ (the code under
    test may be edited between runs)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    status = git("status", "--porcelain", "--", "medres").splitlines()
    changed = [line.split(maxsplit=1)[-1] for line in status]
    return f"commit {commit}" + (
        f" + uncommitted changes to {', '.join(changed)}" if changed else ""
    )


def write_markdown(results: list[dict], out: Path, args: argparse.Namespace, context: dict) -> None:
    """``benchmarks/results/predict_speed.md``."""
    lines = [
        "# Batch prediction speed: `medres predict` vs a naive loop vs the model alone",
        "",
        f"Machine: {machine()}.",
        f"Command: `{context['command']}` ({context['minutes']:.1f} min; 1-min load average "
        f"{context['load']:.2f} at the start). Code: {context['code']}.",
        "",
        f"All numbers from one process: {args.repeats} interleaved rounds of (a), (b) and "
        "every (c) setting. The machine is shared: each measurement waits (up to "
        f"{args.wait_quiet:.0f} s) until other processes take < {QUIET:.0%} of the CPU, is "
        f"repeated (up to {args.retries}×) when they took more meanwhile, and every attempt "
        "is listed with that share in brackets; the best is taken over the quiet attempts "
        "(over all when none was quiet), ratios best against best. (c) is timed over the "
        "whole `predict_folder` call (bundle load, discovery, hashing, decoding, model, "
        "trust layer, writing parquet/CSV) and by run.json's "
        "`scans_per_second` (its prediction loop only), a fresh output folder each time. "
        "`default` is `PredictOptions()` (workers = `default_workers()`: 2 on 2+ cores). "
        "The ceiling row is what a perfect pipeline could reach if the model used every "
        "core at speed (a) and each scan's decoding took one core for 1/prep s. "
        f"Targets: (c) ≥ {TARGET_NAIVE:.0f}× (b) and (c) ≥ {TARGET_MODEL:.0%} of (a).",
        "",
    ]
    for r in results:
        lines += folder_lines(r, args.batch_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-predict"))
    parser.add_argument("--folders", nargs="+", default=["pneumonia224", "adrenal64"])
    parser.add_argument("--scans-2d", type=int, default=2048, help="PNGs to predict")
    parser.add_argument("--naive-limit", type=int, default=300, help="2D files in (b)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument(
        "--wait-quiet", type=float, default=60, help="seconds to wait for a quiet machine"
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="repeats of a measurement disturbed by others"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "predict_speed.md", help="markdown file"
    )
    args = parser.parse_args()
    if not MEDMNIST.is_dir():
        sys.exit(f"MedMNIST files not found under {MEDMNIST}")
    builders = {
        "pneumonia224": lambda: build_pneumonia(args.work, args.scans_2d, 160, 80),
        "adrenal64": lambda: build_adrenal(args.work, 40),
    }
    folders = [builders[name]() for name in args.folders]
    context = {"load": os.getloadavg()[0], "code": code_state()}
    start = time.perf_counter()
    results = [measure(folder, args) for folder in folders]
    context["minutes"] = (time.perf_counter() - start) / 60
    context["command"] = " ".join(
        ["python benchmarks/predict_speed.py", *map(shlex.quote, sys.argv[1:])]
    )
    write_markdown(results, args.out, args, context)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
