"""Batch prediction speed of ``medres predict``: runtimes × engines against the machine.

Two folders are built once under ``--work`` (reused when already there):

- ``pneumonia224/scans``: PneumoniaMNIST chest X-rays (training split, shuffled) upsampled
  28 → 224 px (PIL bilinear), 8-bit grey PNG;
- ``adrenal64/export/test``: the AdrenalMNIST3D 64³ test split as ``.nii.gz`` (identity
  affine, 1 mm) from ``medres datasets medmnist``.

Each gets a bundle trained through the medres CLI on a labelled set of the same kind of
images (other MedMNIST images: 480 + 320 validation X-rays, 4 epochs; up to 300
AdrenalMNIST3D volumes a class + the 98 validation ones, 30 epochs, 5 min): the preprocessing
spec (224² / 64³) and model set the speed, and a usable model is what the int8 gate
judges.

The default section, in one process and one run (the runtime/engine matrix):

- the machine's matrix-multiply peak: torch GEMM 2048² (the process's torch threads),
  best of a few repeats, fp32, bf16 (when this CPU has native bf16) and int8
  (``torch._int_mm``), in GFLOP/s (GOP/s for int8);
- the model's FLOPs per scan (``torch.utils.flop_counter.FlopCounterMode``, one scan);
- per folder, a fresh copy of its bundle exported for ``onnx``, ``onnx-int8``,
  ``openvino`` and ``openvino-int8`` through the library (``export_bundle``,
  ``export_int8``): an export refused by its gate is recorded as refused with its
  figures, a runtime this tree or this environment lacks as not available;
- then ``--rounds`` interleaved rounds of, per runtime, *model only* (the network
  ``medres predict`` builds for that runtime, through ``medres.inference.forward`` with
  the precision and memory layout it picks, on preprocessed batches in memory: scans/s,
  GFLOP/s and share of the peak) and *whole call* (``predict_folder`` with
  ``PredictOptions(runtime=...)`` into a fresh output folder: scans/s over the whole
  call, and run.json's prediction-phase ``scans_per_second``; with the default workers
  and with ``--workers 0``, decoding in-process), and the Ray engine
  (``PredictOptions(engine="ray", workers=1)``, a local cluster started and stopped
  inside the call) with torch and with the best runtime, beside the local engine.

Every speed is also given as a ratio to the default (``PredictOptions()``: ``--runtime
torch``, local engine) whole call measured in the same run. ``--legacy`` adds the older
measurements: (a) model only, (b) a naive per-file loop (MONAI ``LoadImage``, batch 1)
and (c) ``predict_folder`` with ``workers`` 0, 1, 2.

Writes ``benchmarks/results/predict_speed.md`` (``--out``).

Usage::

    python benchmarks/predict_speed.py                      # the full run (~20 min)
    python benchmarks/predict_speed.py --limit 48 --rounds 1 --out /tmp/speed.md
    python benchmarks/predict_speed.py --folders adrenal64 --runtimes torch onnx --no-ray
    python benchmarks/predict_speed.py --legacy --workers 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
TARGET_SPEEDUP = 1.5  # the best accepted runtime's whole call against the default's
QUIET = 0.05  # a round counts as quiet when other processes took less than this CPU share
RUNTIME_ORDER = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}  # runtime family -> package


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


def train_bundle(labelled: Path, bundle: Path, epochs: int) -> None:
    """ingest → split (kept) → train ``epochs``; skipped when ``bundle`` already exists.

    Trained long enough that its outputs are those of a usable model: the int8 gate
    compares predicted classes, which a barely trained model leaves near 0.5 (1 epoch:
    2 of 80 validation X-rays changed class under int8; the 3D bundle after 5 epochs,
    validation AUROC 0.77: 4 of 98 volumes; both refused at 99 %; after 30, AUROC 0.82:
    none)."""
    if (bundle / "bundle.json").is_file():
        return
    cohort, split = bundle.parent / "cohort.parquet", bundle.parent / "cohort_split.parquet"
    medres_cli("ingest", str(labelled), "--labels", str(labelled / "labels.csv"), "-o", str(cohort))
    medres_cli("split", str(cohort), "--keep-column", "split", "-o", str(split))
    shutil.rmtree(bundle, ignore_errors=True)
    medres_cli("train", "--cohort", str(split), "--epochs", str(epochs), "-o", str(bundle))


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
    train_bundle(labelled, root / "bundle", epochs=4)
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
    train_bundle(labelled, root / "bundle", epochs=30)
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

    for round_ in range(1, args.rounds + 1):
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


# ---------------------------------------------------------------- the runtime/engine matrix


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa_flags() -> str:
    """Which of the instruction-set extensions that matter for the model kernels this CPU
    has (from /proc/cpuinfo's flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(x for x in text.splitlines() if x.startswith("flags")).split())
    except (OSError, StopIteration):
        return "ISA flags unknown"
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"]
    wanted += ["amx_bf16", "amx_int8"]
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def version(package: str) -> str:
    """A package's version, or 'not installed'."""
    if importlib.util.find_spec(package) is None:
        return "not installed"
    try:
        return str(importlib.import_module(package).__version__)
    except Exception as e:  # a broken install says so instead of stopping the run
        return f"unimportable ({type(e).__name__})"


def matrix_machine() -> str:
    """The machine line of the matrix: CPU, cores, versions, ISA flags."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from medres import __version__

    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "onnxruntime", "openvino", "ray"))
    return (
        f"{cpu_model()}, {cores} cores, {versions}, Python {platform.python_version()}, "
        f"medres {__version__}; torch threads {torch.get_num_threads()} (DataLoader "
        f"workers run 1 each), torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"native bf16 (mkldnn) {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; {isa_flags()}"
    )


def gemm_peak(dtype: str, n: int = 4096, repeats: int = 3) -> float | None:
    """The best rate of an n×n matrix multiply in this process's torch threads, in
    GFLOP/s (int8: GOP/s, ``torch._int_mm``); None when this torch/CPU cannot run it."""
    try:
        if dtype == "int8":
            a = torch.randint(-128, 128, (n, n), dtype=torch.int8)
            b = torch.randint(-128, 128, (n, n), dtype=torch.int8)

            def mm():
                return torch._int_mm(a, b)
        else:
            if dtype == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return None
            kind = torch.float32 if dtype == "fp32" else torch.bfloat16
            a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)

            def mm():
                return a @ b

        return 2 * n**3 / best_seconds(mm, repeats) / 1e9
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def conv_peak(dtype: str, repeats: int = 3) -> float | None:
    """For context beside the GEMM peak: the best rate of one large 3×3 convolution
    (batch 32, 256 → 256 channels, 28², channels-last; bf16 through autocast, as
    ``medres predict`` runs a bf16 bundle), in GFLOP/s: oneDNN's convolutions can beat
    torch's GEMM, so a model's share of the GEMM peak can exceed 100 %."""
    if dtype == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    x = torch.randn(32, 256, 28, 28).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3)
    flops = 2 * 32 * 256 * 256 * 9 * 28 * 28

    def conv():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return torch.nn.functional.conv2d(x, w, padding=1)

    with torch.no_grad():
        return flops / best_seconds(conv, repeats) / 1e9


def best_seconds(work, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``work`` (after one untimed warm-up)."""
    work()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return min(seconds)


PEAKS = ("fp32", "bf16", "int8", "conv fp32", "conv bf16")


def peaks_now() -> tuple[float, ...]:
    """One measurement of every peak in :data:`PEAKS` (NaN where not supported)."""
    values = [gemm_peak(k) for k in ("fp32", "bf16", "int8")]
    values += [conv_peak(k) for k in ("fp32", "bf16")]
    return tuple(float("nan") if v is None else v for v in values)


def model_flops(bundle) -> float:
    """FLOPs of the bundle's model on one scan (``FlopCounterMode``: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    spec = bundle.spec
    model = bundle.model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, spec.in_channels, *spec.spatial_size))
    return float(counter.get_total_flops())


@dataclass
class Export:
    """What became of one runtime's export: ``status`` accepted / refused / unavailable /
    error, the seconds it took, and the text to show (its figures or the reason)."""

    runtime: str
    status: str
    seconds: float = 0.0
    note: str = ""


def runtime_missing(runtime: str) -> str | None:
    """Why ``runtime`` cannot run here (this tree lacks it, its package is missing), or
    None."""
    if runtime == "torch":
        return None
    try:
        from medres.predict import runtime as module
    except Exception as e:  # a tree mid-edit: say so, measure the rest
        return f"medres.predict.runtime cannot be imported in this tree ({type(e).__name__}: {e})"
    if runtime not in getattr(module, "RUNTIMES", ()):
        return "not available in this tree (medres.predict.runtime.RUNTIMES lacks it)"
    package = PACKAGES[runtime.split("-")[0]]
    if importlib.util.find_spec(package) is None:
        return f"unavailable: the {package} package is not installed"
    return None


def export_runtime(bundle_path: Path, runtime: str, batch_size: int) -> Export:
    """Export the bundle for ``runtime`` through the library (``export_bundle``,
    ``export_int8``); a refusal by its gate is a result, not an error."""
    missing = runtime_missing(runtime)
    if missing:
        return Export(runtime, "unavailable", note=missing)
    family, _, precision = runtime.partition("-")
    start = time.perf_counter()
    try:
        from medres.predict.export import ExportRefused

        if precision == "int8":
            from medres.predict.quantize import export_int8

            record = export_int8(bundle_path, family, batch_size=batch_size)
        else:
            from medres.predict.export import export_bundle

            record = export_bundle(bundle_path, family, batch_size=batch_size)
    except ExportRefused as e:
        return Export(runtime, "refused", time.perf_counter() - start, str(e))
    except Exception as e:  # ConfigError (e.g. the tree cannot export it yet) and the like
        text = f"{type(e).__name__}: {e}"
        status = "unavailable" if "must be one of" in text or "exports for" in text else "error"
        note = ("not available in this tree: " if status == "unavailable" else "") + text
        return Export(runtime, status, time.perf_counter() - start, note)
    seconds = time.perf_counter() - start
    verified = record.get("verified") or {}
    if precision == "int8":
        note = "; ".join(verified.get("checks", [])) or "accepted"
    else:
        note = (
            f"{verified.get('quantity', 'outputs')} within {verified.get('max_abs_diff', 0):.2g} "
            f"of torch on {verified.get('scans', '?')} validation scans "
            f"(tolerance {verified.get('tolerance', '?')})"
        )
    return Export(runtime, "accepted", seconds, note)


def ray_available() -> str | None:
    """Why the Ray engine cannot be measured here, or None."""
    from medres.predict.job import PredictOptions

    names = {f.name for f in dataclasses.fields(PredictOptions)}
    if "engine" not in names:
        return "not available in this tree (PredictOptions has no `engine` field)"
    if importlib.util.find_spec("ray") is None:
        return "unavailable: the ray package is not installed"
    return None


@dataclass
class Config:
    """One row of the matrix: ``kind`` ``model`` (model only) or ``call`` (whole
    ``predict_folder`` call) of ``runtime`` on ``engine``; ``attempts`` its measurements,
    each (scans/s, [run.json scans/s,] other processes' CPU share)."""

    kind: str
    runtime: str
    engine: str = "local"
    attempts: list[tuple] = field(default_factory=list)
    precision: str = ""
    error: str = ""
    ray: dict = field(default_factory=dict)
    workers: int | None = None  # local engine: --workers (None: the default)

    @property
    def label(self) -> str:
        if self.kind == "model":
            return f"model only, {self.runtime}"
        engine = "Ray engine (workers=1)" if self.engine == "ray" else "local engine"
        if self.workers is not None:
            return f"whole call, {self.runtime}, {engine}, --workers {self.workers}"
        default = " = default" if self.runtime == "torch" and self.engine == "local" else ""
        return f"whole call, {self.runtime}, {engine}{default}"


def limited_folder(folder: Folder, limit: int | None, work: Path) -> Folder:
    """``folder`` itself, or (``--limit``) a folder holding copies of its first ``limit``
    scans (sorted by name), built under ``work``."""
    if not limit:
        return folder
    files = sorted(p for p in folder.scans.iterdir() if p.is_file() and p.suffix != ".csv")
    target = work / "limited" / f"{folder.bundle.parent.name}-{limit}"
    wanted = [p.name for p in files[:limit]]
    if sorted(p.name for p in target.glob("*")) != sorted(wanted):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for p in files[:limit]:
            shutil.copyfile(p, target / p.name)
    return dataclasses.replace(folder, scans=target)


def fresh_bundle(folder: Folder) -> Path:
    """A fresh copy of the folder's trained bundle (no exports yet), which this run
    exports into: every export of the run is made and timed in it."""
    copy = folder.bundle.parent / "bundle-matrix"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder.bundle, copy)
    return copy


def network_for(bundle_path: Path, runtime: str, scratch: Path):
    """The network ``medres predict --runtime runtime`` runs, with its device, torch
    autocast precision and memory layout (built by ``medres.predict.predictor.Predictor``
    itself)."""
    from medres.bundle import load_bundle
    from medres.predict.job import PredictOptions
    from medres.predict.predictor import Predictor

    bundle = load_bundle(bundle_path)
    predictor = Predictor([bundle], PredictOptions(runtime=runtime), scratch, bundle.checksum)
    return predictor.networks[0], predictor.device, predictor.autocast, predictor.memory_format


def time_network(network, device, precision, layout, batches: list[torch.Tensor]) -> float:
    """Seconds for ``forward`` over ``batches`` (after one untimed warm-up batch)."""
    from medres.inference import forward

    batches = [b.contiguous(memory_format=layout) for b in batches]
    with torch.no_grad():
        forward(network, batches[0], device=device, precision=precision, memory_format=layout)
        start = time.perf_counter()
        for batch in batches:
            forward(network, batch, device=device, precision=precision, memory_format=layout)
        return time.perf_counter() - start


def call(folder: Folder, bundle: Path, out: Path, batch_size: int, **options) -> dict:
    """One ``predict_folder`` call into a fresh ``out``: its run.json plus ``wall_s``."""
    from medres.predict.job import PredictOptions, predict_folder

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    run = predict_folder(
        bundle, folder.scans, out, PredictOptions(batch_size=batch_size, **options)
    )
    wall = time.perf_counter() - start
    counts = run.summary["counts"]
    if counts["failed"] or counts["predicted_now"] != counts["scans"]:
        raise RuntimeError(f"predict on {folder.scans} did not predict every scan: {counts}")
    return {**run.summary, "wall_s": wall}


def measure_matrix(folder: Folder, args: argparse.Namespace) -> dict:
    """Exports, then ``--rounds`` interleaved rounds of every config, for one folder."""
    from medres.bundle import load_bundle
    from medres.io import discover

    bundle_path = fresh_bundle(folder)
    bundle = load_bundle(bundle_path)
    size = tuple(bundle.spec.spatial_size)
    if size != folder.size:
        sys.exit(f"{folder.bundle} preprocesses to {size}, expected {folder.size}")
    files = [Path(s.files[0]) for s in discover(folder.scans).scans]
    n = len(files)
    print(f"\n== {folder.name}: {n} scans, bundle {bundle_path}", flush=True)
    flops = model_flops(bundle)
    exports = {}
    for runtime in [r for r in args.runtimes if r != "torch"]:
        exports[runtime] = export_runtime(bundle_path, runtime, args.batch_size)
        e = exports[runtime]
        print(f"export {runtime}: {e.status} ({e.seconds:.0f} s) {e.note[:300]}", flush=True)
    runtimes = [r for r in args.runtimes if r == "torch" or exports[r].status == "accepted"]

    model_n = min(n, args.model_scans)
    tensors, prep_seconds = preprocessed(files[:model_n], bundle.spec)
    batches = [
        torch.stack(tensors[i : i + args.batch_size]) for i in range(0, model_n, args.batch_size)
    ]
    del tensors
    scratch = args.work / "out" / "scratch"
    networks, configs = {}, []
    for runtime in runtimes:
        model = Config("model", runtime)
        try:
            networks[runtime] = network_for(bundle_path, runtime, scratch)
            model.precision = "int8" if runtime.endswith("-int8") else networks[runtime][2]
        except Exception as e:  # a runtime that cannot be built here is a row saying why
            model.error = f"{type(e).__name__}: {e}"
        configs.append(model)
    configs += [Config("call", r) for r in runtimes]
    # decoding in-process: on 2 cores the 64³ whole call was faster without worker processes
    configs += [Config("call", r, workers=0) for r in runtimes]
    ray_missing = ray_available() if args.ray else "not measured (--no-ray)"
    result = {
        "name": folder.name,
        "n": n,
        "model_n": model_n,
        "bundle": bundle,
        "flops": flops,
        "exports": exports,
        "prep": model_n / prep_seconds,
        "configs": configs,
        "ray_missing": ray_missing,
        "ray_runtime": None,
    }
    if args.ray and not ray_missing and "torch" in runtimes:
        configs.append(Config("call", "torch", "ray"))

    def attempts(measure, retries: int | None = None) -> list[tuple]:
        return quiet_attempts(
            measure, args.wait_quiet, args.retries if retries is None else retries
        )

    def run_config(c: Config) -> None:
        if c.error:
            return
        tag = f"{folder.bundle.parent.name}-{c.kind}-{c.runtime}-{c.engine}-{c.workers}"
        try:
            if c.kind == "model":
                network = networks[c.runtime]
                c.attempts += attempts(lambda: (model_n / time_network(*network, batches),))
            else:
                options = {"runtime": c.runtime}
                if c.workers is not None:
                    options["workers"] = c.workers
                if c.engine == "ray":  # Ray's own processes count as "other": no retries
                    options |= {"engine": "ray", "workers": 1}

                def one() -> tuple[float, float]:
                    out = args.work / "out" / tag
                    run = call(folder, bundle_path, out, args.batch_size, **options)
                    c.precision = str(run.get("precision") or "")
                    c.ray = {**run.get("ray", {}), "threads": run.get("threads")}
                    return n / run["wall_s"], run["scans_per_second"] or float("nan")

                c.attempts += attempts(one, 0 if c.engine == "ray" else None)
        except Exception as e:  # recorded in the table; the other configs still run
            c.error = f"{type(e).__name__}: {e}"
        value = f"{c.attempts[-1][0]:.1f} scans/s" if c.attempts and not c.error else c.error
        print(f"  {c.label}: {value[:300]}", flush=True)

    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}", flush=True)
        for c in list(configs):
            run_config(c)
        if round_ == 1 and args.ray and not ray_missing:  # Ray with the best local runtime
            calls = [
                c
                for c in configs
                if c.kind == "call" and c.engine == "local" and c.workers is None and c.attempts
            ]
            if calls:
                best_local = max(calls, key=lambda c: best(c.attempts))
                result["ray_runtime"] = best_local.runtime
                if best_local.runtime != "torch":
                    configs.append(Config("call", best_local.runtime, "ray"))
                    run_config(configs[-1])
    return result


def best_of(c: Config, i: int = 0) -> float:
    """The best value ``i`` of a config's attempts: over the quiet ones (see
    :func:`best`); a Ray row over all (its cluster's processes count as other load)."""
    if not c.attempts:
        return float("nan")
    return max(a[i] for a in c.attempts) if c.engine == "ray" else best(c.attempts, i)


def row_peak(c: Config, peaks: dict[str, float]) -> tuple[str, float]:
    """Which peak a model-only row is compared with: int8 runtimes the int8 GEMM's, a
    bf16 (autocast) torch row the bf16 GEMM's, every other the fp32 GEMM's."""
    kind = "int8" if c.runtime.endswith("int8") else "bf16" if c.precision == "bf16" else "fp32"
    value = peaks.get(kind)
    if value is None or value != value:  # not measured: fall back to fp32
        kind, value = "fp32", peaks["fp32"]
    return kind, value


def hours(rate: float, scans: float = 1e6) -> str:
    return f"{scans / rate / 3600:.1f} h" if rate and rate == rate else "—"


def matrix_lines(r: dict, args: argparse.Namespace, peaks: dict[str, float]) -> list[str]:
    """The markdown of one folder: its exports, its table, the verdict, and the 1 M scans
    calculation."""
    spec, manifest, config = r["bundle"].spec, r["bundle"].manifest, r["bundle"].config
    gflop = r["flops"] / 1e9
    configs: list[Config] = r["configs"]
    default = next((c for c in configs if c.label.endswith("= default")), None)
    base = best_of(default) if default and default.attempts else float("nan")
    lines = [
        f"## {r['name']}",
        "",
        f"{r['n']} scans per whole call; model only on the first {r['model_n']} of them, "
        f"preprocessed in memory. Bundle preprocessing `{spec.preset}` → "
        f"{'×'.join(map(str, spec.spatial_size))}, model `{manifest.model.name}` "
        f"stem_stride {manifest.model.args.get('stem_stride')}, trained in "
        f"{config.precision}, batch {args.batch_size}; **{gflop:.3g} GFLOP per scan** "
        "(`FlopCounterMode`, one scan, 2 FLOP per multiply-add). Reading + preprocessing "
        f"alone (`read_scan` + transform, one thread): {r['prep']:.1f} scans/s.",
        "",
        "Exports, made in this run into a fresh copy of the bundle through the library "
        "(`export_bundle`, `export_int8`):",
        "",
    ]
    for e in r["exports"].values():
        took = f" in {e.seconds:.0f} s" if e.seconds else ""
        lines.append(f"- `{e.runtime}`: **{e.status}**{took}: {e.note}")
    if not r["exports"]:
        lines.append("- none asked for (`--runtimes torch`)")
    lines += [
        "",
        "| config | precision | scans | scans/s (best) | every attempt (other processes' CPU "
        "share) | × default whole call | run.json prediction phase, scans/s (best) "
        "| model GFLOP/s | share of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        scans = r["model_n"] if c.kind == "model" else r["n"]
        if c.error or not c.attempts:
            lines.append(f"| {c.label} | {c.precision} | {scans} | failed: {c.error} | | | | | |")
            continue
        value = best_of(c)
        phase = f"{best_of(c, 1):.1f}" if c.kind == "call" else ""
        flops = share = ""
        if c.kind == "model":
            kind, peak = row_peak(c, peaks)
            flops = f"{value * gflop:.1f}"
            share = f"{value * gflop / peak:.0%} of {kind}"
        lines.append(
            f"| {c.label} | {c.precision} | {scans} | {value:.1f} | {_rounds(c.attempts)} "
            f"| {value / base:.2f}× | {phase} | {flops} | {share} |"
        )
    for e in r["exports"].values():
        if e.status != "accepted":
            lines.append(f"| {e.runtime} | | | not measured: export {e.status} | | | | | |")
    if r["ray_missing"]:
        lines.append(f"| Ray engine | | | not measured: {r['ray_missing']} | | | | | |")
    calls = [c for c in configs if c.kind == "call" and c.attempts and not c.error]
    fastest = max(calls, key=best_of) if calls else None
    lines.append("")
    if fastest is not None and base == base:
        ratio = best_of(fastest) / base
        lines.append(
            f"- Best accepted runtime, whole call, ≥ {TARGET_SPEEDUP}× the default "
            f"(`--runtime torch`, local engine): {_verdict(ratio >= TARGET_SPEEDUP)} "
            f"({ratio:.2f}×: {fastest.label}, {best_of(fastest):.1f} scans/s against "
            f"{base:.1f})."
        )
    else:
        lines.append("- Best accepted runtime against the default: not measured (see the table).")
    ray = [c for c in calls if c.engine == "ray"]
    if ray:
        lines.append(
            "- The Ray engine's whole call includes starting and stopping a local Ray "
            "cluster (`ray.init` / `ray.shutdown` inside `predict_folder`); its run.json "
            "column is run.json's prediction phase (whatever of the cluster's start-up falls "
            "inside it). Its CPU share in brackets includes the cluster's own processes "
            "(raylet, Ray workers), so its best is over all attempts. The cluster, from "
            "run.json: "
            + "; ".join(
                f"{c.runtime}: " + ", ".join(f"{k} {v}" for k, v in c.ray.items()) for c in ray
            )
            + "."
        )
    if ray and r["ray_runtime"] == "torch":
        lines.append(
            "- The best local runtime (whole call, round 1) was torch: the Ray engine was "
            "measured with torch only."
        )
    # 1 M scans: a calculation from the measured rates
    local_best = max((c for c in calls if c.engine == "local"), key=best_of, default=None)
    ray_best = max(ray, key=lambda c: best_of(c, 1), default=None)
    text = (
        f"- **1 M scans, a calculation from the figures above, not a measurement**: at the "
        f"default's whole-call rate ({base:.1f} scans/s) one such machine takes "
        f"{hours(base)}"
    )
    if local_best is not None:
        text += (
            f"; at the best local rate ({local_best.label}, {best_of(local_best):.1f} "
            f"scans/s) {hours(best_of(local_best))}"
        )
    if ray_best is not None:
        rate = best_of(ray_best, 1)
        each = ", ".join(f"N = {k}: {hours(k * rate)}" for k in (1, 4, 16))
        text += (
            f". The Ray engine ({ray_best.runtime}) predicted {rate:.1f} scans/s per "
            f"machine (prediction phase); assuming linear scaling over N such machines "
            f"(cluster start-up and the shared file system ignored): {each}"
        )
    else:
        text += f"; Ray engine: {r['ray_missing'] or 'not measured'}"
    lines += [text + ".", ""]
    return lines


def write_matrix(
    results: list[dict], legacy: list[dict], args: argparse.Namespace, context: dict
) -> None:
    """The results markdown: machine, command, code, peak, then one section per folder
    (and the legacy sections when measured)."""
    peaks = context["peaks"]
    int8 = peaks.get("int8")
    bf16 = peaks.get("bf16")
    lines = [
        "# Batch prediction speed: `medres predict` runtimes and engines against the machine",
        "",
        f"Machine: {matrix_machine()}.",
        "",
        f"Command: `{context['command']}` ({context['minutes']:.1f} min of measuring; "
        f"1-min load average {context['load']:.2f} at the start). Code: {context['code']}.",
        "",
        "Matrix-multiply peak of this machine (torch, 4096² × 4096², "
        f"{torch.get_num_threads()} threads, best of 3 products, measured at the start and "
        f"at the end of the run): **fp32 {peaks['fp32']:.1f} GFLOP/s**"
        + (f", bf16 {bf16:.1f} GFLOP/s" if bf16 == bf16 else ", bf16 not supported")
        + (f", int8 {int8:.1f} GOP/s (`torch._int_mm`)" if int8 == int8 else "")
        + f" (attempts, fp32: {_rounds(context['peak_attempts'])}). For context, one large "
        "3×3 convolution (batch 32, 256 → 256 channels, 28², channels-last, oneDNN): "
        f"fp32 {peaks['conv fp32']:.1f}, bf16 (autocast) {peaks['conv bf16']:.1f} GFLOP/s; "
        "oneDNN's convolutions can beat torch's GEMM, so a share above 100 % is possible. "
        "A model-only row's "
        "GFLOP/s is its FLOPs per scan × scans/s; its share is of the fp32 GEMM peak for "
        "fp32 rows, of the bf16 GEMM peak for a torch row running bf16 autocast (a bundle "
        "trained in bf16 on a CPU with native bf16: what `medres predict` picks), and of "
        "the int8 peak for int8 rows (their FLOPs counted as the fp32 model's; ONNX "
        "Runtime's and OpenVINO's int8 kernels are not `torch._int_mm`, so that share is "
        "indicative).",
        "",
        f"All figures from one process: {args.rounds} interleaved round(s) of every config. "
        "The machine is shared: each measurement waits (up to "
        f"{args.wait_quiet:.0f} s) until other processes take < {QUIET:.0%} of the CPU, is "
        f"repeated (up to {args.retries}×) when they took more meanwhile, and every attempt "
        "is listed with that share in brackets; the best is taken over the quiet attempts "
        "(over all when none was quiet). Speeds are compared as ratios to the default "
        "(`PredictOptions()`: `--runtime torch`, local engine, default workers) whole call "
        "measured in the same run. *Model only*: the network `medres predict` builds for the "
        "runtime (`Predictor`), through `medres.inference.forward` with its precision and "
        "memory layout, on preprocessed batches in memory. *Whole call*: `predict_folder` "
        "into a fresh output folder, timed from the call to its return (bundle load, "
        "discovery, hashing, decoding, model, trust layer, writing the tables); run.json's "
        "`scans_per_second` is its prediction loop alone.",
        "",
    ]
    for r in results:
        lines += matrix_lines(r, args, peaks)
    if legacy:
        lines += [
            "# Older measurements (`--legacy`): model only, naive loop, workers",
            "",
            f"Machine: {machine()}.",
            "",
        ]
        for r in legacy:
            lines += folder_lines(r, args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))


def _peak_text(attempts: list[tuple]) -> str:
    return ", ".join(f"{k} {best(attempts, i):.1f}" for i, k in enumerate(PEAKS)) + " G(FL)OP/s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=(
            "example: python benchmarks/predict_speed.py  (the full run, ~20 min on 2 quiet "
            "cores, writes benchmarks/results/predict_speed.md); quick check: "
            "python benchmarks/predict_speed.py --limit 48 --rounds 1 --out /tmp/speed.md"
        ),
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/medres-bench-predict"))
    parser.add_argument(
        "--folders", nargs="+", default=["pneumonia224", "adrenal64"],
        choices=["pneumonia224", "adrenal64"],
    )  # fmt: skip
    parser.add_argument("--scans-2d", type=int, default=1024, help="PNGs built to predict")
    parser.add_argument(
        "--limit", type=int, default=None,
        help="predict only the first N scans of each folder (copied aside; a quick check)",
    )  # fmt: skip
    parser.add_argument(
        "--runtimes", nargs="+", default=list(RUNTIME_ORDER), choices=RUNTIME_ORDER,
        help="runtimes of the matrix (torch is the default's)",
    )  # fmt: skip
    parser.add_argument(
        "--model-scans", type=int, default=256, help="scans per model-only measurement"
    )
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray engine")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--rounds", "--repeats", dest="rounds", type=int, default=2, help="interleaved rounds"
    )
    parser.add_argument(
        "--legacy", action="store_true",
        help="also the older measurements: (a) model, (b) naive loop, (c) per --workers",
    )  # fmt: skip
    parser.add_argument("--naive-limit", type=int, default=300, help="2D files in (b), --legacy")
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[0, 1, 2], help="(c) settings, --legacy"
    )
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
    if "torch" not in args.runtimes:
        args.runtimes.insert(0, "torch")  # the default: every ratio is against it
    args.runtimes = [r for r in RUNTIME_ORDER if r in args.runtimes]
    builders = {
        "pneumonia224": lambda: build_pneumonia(args.work, args.scans_2d, 480, 320),
        "adrenal64": lambda: build_adrenal(args.work, 300),
    }
    folders = [limited_folder(builders[name](), args.limit, args.work) for name in args.folders]
    context = {"load": os.getloadavg()[0], "code": code_state()}
    start = time.perf_counter()
    peak_attempts = quiet_attempts(peaks_now, args.wait_quiet, args.retries)
    print(f"matmul peak: {_peak_text(peak_attempts)}", flush=True)
    results = [measure_matrix(folder, args) for folder in folders]
    legacy = [measure(folder, args) for folder in folders] if args.legacy else []
    peak_attempts += quiet_attempts(peaks_now, args.wait_quiet, args.retries)  # and at the end
    print(f"matmul peak, both measurements: {_peak_text(peak_attempts)}", flush=True)
    context["peak_attempts"] = peak_attempts
    context["peaks"] = {k: best(peak_attempts, i) for i, k in enumerate(PEAKS)}
    context["minutes"] = (time.perf_counter() - start) / 60
    context["command"] = " ".join(
        ["python benchmarks/predict_speed.py", *map(shlex.quote, sys.argv[1:])]
    )
    write_matrix(results, legacy, args, context)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
