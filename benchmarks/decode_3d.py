"""Where a 3D .nii.gz scan's decoding time goes, and what the cheaper path saves.

Times each stage of ``medres predict``'s read and preprocessing of AdrenalMNIST3D
volumes (exported by ``medres.datasets.medmnist.export_medmnist``: 64³ and 28³ uint8
.nii.gz, identity affine, the ``mr_3d`` preset) on one core, as a DataLoader worker
runs it (one torch thread): the file read, gzip inflate, nibabel's header and array, the
Fortran-to-C copy, each preprocessing step, and the whole read + preprocess. "before"
is the code at ``--baseline`` (``medres/io/nifti.py`` and ``medres/transforms.py``
loaded from git), "after" the working tree; both run in the same process, rounds
interleaved, and every volume's final tensor is checked to be identical. Ratios are
medians over rounds of before/after per round. Writes ``benchmarks/results/decode_3d.md``
or ``--out``.

Usage::

    python benchmarks/decode_3d.py
    python benchmarks/decode_3d.py --volumes 30 --rounds 5 --baseline af7ea73
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import medres.io.nifti as nifti_after
import medres.transforms as transforms_after
from medres.datasets.medmnist import export_medmnist

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEDRES_SHARED_DATA", ROOT.parent / "shared" / "data"))
SIZES = {"64³": "adrenalmnist3d_64.npz", "28³": "adrenalmnist3d.npz"}
BASELINE = "af7ea73"  # the commit before the cheaper 3D decoding
# stages whose code did not change: their ratio shows what is noise (should be ~1)
UNCHANGED = {"read the file", "ToTensor", "Orientation", "Resize", "PlainTensor"}


def _module_at(commit: str, path: str, name: str):
    """``path`` as it was at ``commit``, imported as module ``name``."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def _spec(files: list[Path], spatial_size: tuple[int, ...] | None):
    """The ``mr_3d`` spec a bundle trained on these volumes has (or one resizing to
    ``spatial_size``)."""
    shape = list(nifti_after.read_nifti(files[0]).array.shape)
    spec = transforms_after.default_spec("NIFTI", shape)
    return spec if spatial_size is None else spec.model_copy(update={"spatial_size": spatial_size})


def _per_volume_ms(fn: Callable, items: list) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e3


def _stages(files: list[Path], before, after, spec) -> dict[str, tuple[Callable, Callable, list]]:
    """stage name → (before, after, inputs); the same function twice for unchanged steps."""
    raw = [f.read_bytes() for f in files]
    arrays = [np.asanyarray(nib.load(f).dataobj) for f in files]
    nifti_b, tf_b = before
    nifti_a, tf_a = after
    old_t, new_t = tf_b.build_transform(spec), tf_a.build_transform(spec)
    volumes = [nifti_a.read_nifti(f) for f in files]
    inputs = [volumes]  # each step's inputs: the previous step's outputs
    for step in new_t.transforms[:-1]:
        inputs.append([step(x) for x in inputs[-1]])
    steps = {}
    for i, (old_step, new_step) in enumerate(zip(old_t.transforms, new_t.transforms, strict=True)):
        steps[f"  {type(new_step).__name__}"] = (old_step, new_step, inputs[i])
    return {
        "read the file": (Path.read_bytes, Path.read_bytes, files),
        "gzip inflate (zlib → ISA-L)": (
            gzip.decompress,
            lambda r: nifti_a._inflate(r, 1 << 62),
            raw,
        ),
        "nibabel header + array": (
            lambda f: np.asanyarray(nib.load(f).dataobj),
            nifti_a._load_gzipped,
            files,
        ),
        "F→C copy of the array": (
            lambda a: np.ascontiguousarray(a[None]),
            lambda a: nifti_a._fortran_to_c(a)[None] if a.ndim == 3 else a,
            arrays,
        ),
        "read_nifti, whole": (nifti_b.read_nifti, nifti_a.read_nifti, files),
        **steps,
        "preprocess, whole": (old_t, new_t, volumes),
        "read + preprocess": (
            lambda f: old_t(nifti_b.read_nifti(f)),
            lambda f: new_t(nifti_a.read_nifti(f)),
            files,
        ),
    }


def _check_identical(files: list[Path], before, after, spec) -> None:
    old_t, new_t = before[1].build_transform(spec), after[1].build_transform(spec)
    for f in files:
        a, b = before[0].read_nifti(f), after[0].read_nifti(f)
        assert np.array_equal(a.array, b.array) and a.array.dtype == b.array.dtype, f
        assert np.array_equal(a.affine, b.affine), f
        assert torch.equal(old_t(a), new_t(b)), f


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
            model,
        )
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} logical cores, load average {load} at the start; "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"nibabel {nib.__version__}, numpy {np.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=40, help="test volumes per size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE, help="git commit of 'before'")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/decode_3d.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    machine = _machine()
    before = (
        _module_at(args.baseline, "medres/io/nifti.py", "nifti_before"),
        _module_at(args.baseline, "medres/transforms.py", "transforms_before"),
    )
    after = (nifti_after, transforms_after)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for size, npz in SIZES.items():
            out = Path(tmp) / npz
            export_medmnist(SHARED / "medmnist" / npz, out, splits=["test"], limit=args.volumes)
            files = sorted((out / "test").glob("*.nii.gz"))
            average = statistics.mean(f.stat().st_size for f in files) / 1024
            title = (
                f"AdrenalMNIST3D {size} ({len(files)} test volumes, uint8 masks, "
                f"{average:.1f} KiB .nii.gz on average, the bundle's own size)"
            )
            cases.append((title, files, _spec(files, None)))
        mni = sorted((SHARED / "nifti" / "nilearn_mni152").glob("mni_*.nii.gz"))
        if mni:
            title = (
                "MNI152 2009a T1, GM and WM templates (real MR, 197×233×189 uint8, "
                "1.6-2.0 MB .nii.gz), resized to 64³"
            )
            cases.append((title, mni, _spec(mni, (64, 64, 64))))
        for title, files, spec in cases:
            _check_identical(files, before, after, spec)
            stages = _stages(files, before, after, spec)
            times = {name: ([], []) for name in stages}
            for round_ in range(args.rounds):
                for name, (old, new, items) in stages.items():
                    # before first in even rounds, after first in odd ones: the second
                    # run of a pair finds warmer caches
                    for which in (0, 1) if round_ % 2 == 0 else (1, 0):
                        times[name][which].append(_per_volume_ms((old, new)[which], items))
            lines += [
                f"\n### {title}\n",
                "| stage | before ms/volume | after ms/volume | before/after (median, range) |",
                "|---|---:|---:|---:|",
            ]
            for name, (old, new) in times.items():
                ratios = [o / n for o, n in zip(old, new, strict=True)]
                ratio = f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"
                if name.strip() in UNCHANGED:
                    ratio += " control"
                lines.append(
                    f"| {name} | {statistics.median(old):.3f} | {statistics.median(new):.3f} "
                    f"| {ratio} |"
                )
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    text = "\n".join(
        [
            "# 3D decoding: where a .nii.gz volume's time goes (benchmarks/decode_3d.py)\n",
            f"Command: `{command}`  ",
            f"Machine: {machine}  ",
            f"Before: medres/io/nifti.py and medres/transforms.py at {args.baseline}; "
            "after: the working tree. Same process, rounds interleaved (each stage before, "
            f"then after, the order swapped every round, {args.rounds} rounds); ms are medians "
            "over rounds, every final "
            "tensor checked identical before timing. Stages indented are the steps of "
            "`build_transform` (the `mr_3d` preset). Rows marked control ran the same code "
            "before and after: their spread is the noise of the machine. The milliseconds "
            "of a busy machine move between runs, the ratios much less.",
            *lines,
            "",
        ]
    )
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
