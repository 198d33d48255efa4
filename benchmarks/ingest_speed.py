"""Ingest speed on the 600 DICOM files of dcm_qa_nih, against plain pydicom in the same run.

Baseline: ``pydicom.dcmread(stop_before_pixels=True)`` on every file, the least any
header-based ingest must do. medres then adds discovery, series grouping, geometry
validation and the manifest. Timings are best-of-N wall-clock seconds.

Second part: ``read_scan(folder)`` of a 150-file series, with this tree's code and with
revision ``--against``'s code (a ``git worktree`` on ``PYTHONPATH``, in a subprocess, as
benchmarks/same_behaviour.py does), in the same invocation, best of ``--series-repeat``.
Two series: pydicom's CT_small.dcm written 150 times (new SOP Instance UIDs, Image
Position stepping 1.5 mm along the slice normal, Instance Number 1..150), and the real
150-file GE MR series dcm_qa_nih/20180918GE/mr_0004 as it is.

    .venv/bin/python benchmarks/ingest_speed.py [--data ../shared/data] [--repeat 3]
        [--against HEAD] [--series-repeat 5]

Writes benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pydicom

from medres.cohort import build_cohort
from medres.io.discover import iter_files

RESULTS = Path(__file__).parent / "results" / "ingest.md"
REPO = Path(__file__).resolve().parent.parent

# Run in a subprocess with a tree's code: best-of-N seconds of read_scan(folder).
_TIMER = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import medres
from medres.io import read_scan
folder, repeat = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(repeat):
    start = time.perf_counter()
    volume = read_scan(folder)
    times.append(time.perf_counter() - start)
print(json.dumps({"best": min(times), "shape": list(volume.array.shape),
                  "where": medres.__file__}))
"""


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def write_ct_series(folder: Path, n: int = 150) -> None:
    """pydicom's CT_small.dcm as an ``n``-slice series, 1.5 mm apart along its normal."""
    import numpy as np
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SeriesInstanceUID = generate_uid()
    position = [float(v) for v in ds.ImagePositionPatient]
    cosines = [float(v) for v in ds.ImageOrientationPatient]
    normal = np.cross(cosines[:3], cosines[3:])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [
            round(p + i * 1.5 * k, 4) for p, k in zip(position, normal, strict=True)
        ]
        ds.SliceLocation = round(i * 1.5, 4)
        ds.save_as(folder / f"IM{i + 1:04d}.dcm")


def time_read_scan(tree: Path, folder: Path, repeat: int) -> dict:
    """Best-of-``repeat`` seconds of ``read_scan(folder)`` with ``tree``'s medres."""
    done = subprocess.run(
        [sys.executable, "-c", _TIMER, str(folder), str(repeat)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["where"]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"medres imported from {result['where']}, not from {tree}")
    return result


def series_section(data: Path, against: str, repeat: int) -> list[str]:
    """read_scan of 150-file series: this tree against revision ``against``."""
    rev = git("rev-parse", "--short", against)
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "medres")
    this = f"this tree (HEAD {head}" + (", with uncommitted changes to medres/)" if dirty else ")")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ct = work / "ct_small_x150"
        write_ct_series(ct)
        series = [
            ("CT_small.dcm ×150 (128×128, 150 slices)", ct),
            (
                "dcm_qa_nih 20180918GE/mr_0004 (real GE MR, 150 files: 64×64, 15 slices × 10)",
                (data / "dicom" / "dcm_qa_nih" / "20180918GE" / "mr_0004").resolve(),
            ),
        ]
        tree = work / "before"
        git("worktree", "add", "--detach", str(tree), rev)
        try:
            for name, folder in series:
                before = time_read_scan(tree, folder, repeat)
                after = time_read_scan(REPO, folder, repeat)
                if before["shape"] != after["shape"]:
                    sys.exit(f"{name}: shape {after['shape']} != {before['shape']} at {rev}")
                rows.append(
                    f"| {name} | {before['best']:.3f} | {after['best']:.3f} | "
                    f"{before['best'] / after['best']:.2f} |"
                )
        finally:
            git("worktree", "remove", "--force", str(tree))
    dcm2niix = shutil.which("dcm2niix")
    return [
        "## `read_scan(folder)` of a 150-file series: this code against the previous",
        "",
        f"Revision {rev} (a `git worktree` on `PYTHONPATH`, subprocess) against {this}, "
        f"run in the same invocation; best of {repeat} each, seconds, in-process timing "
        "(imports excluded).",
        "",
        f"| series | {rev} | this tree | speed-up |",
        "|---|---|---|---|",
        *rows,
        "",
        (
            f"dcm2niix: {dcm2niix}."
            if dcm2niix
            else "dcm2niix is not installed on this machine (`which dcm2niix` finds nothing), "
            "so the comparison with dcm2niix's time could not be made here."
        ),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", default="HEAD", help="revision to compare read_scan with")
    parser.add_argument("--series-repeat", type=int, default=5)
    args = parser.parse_args()
    folder = (args.data / "dicom" / "dcm_qa_nih").resolve()
    files = [p for p in iter_files(folder) if p.suffix == ".dcm"]
    warnings.simplefilter("ignore")

    baseline = best_of(
        args.repeat, lambda: [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    )
    headers = best_of(args.repeat, lambda: build_cohort(folder, verify_pixels=False))
    full = best_of(args.repeat, lambda: build_cohort(folder, verify_pixels=True))
    cohort, _ = build_cohort(folder, verify_pixels=False)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        "# Ingest speed: dcm_qa_nih (real GE and Siemens MR series)",
        "",
        f"{len(files)} DICOM files, {len(cohort.table)} scans; {machine}; best of {args.repeat}.",
        "",
        "| what | seconds | files/s | × pydicom header read |",
        "|---|---|---|---|",
        f"| pydicom `dcmread(stop_before_pixels=True)` per file (baseline) | {baseline:.2f} | "
        f"{len(files) / baseline:.0f} | 1.00 |",
        f"| `medres ingest --headers-only` (discover, group, check geometry, manifest) | "
        f"{headers:.2f} | {len(files) / headers:.0f} | {headers / baseline:.2f} |",
        f"| `medres ingest` (also decodes every pixel, hashes it) | {full:.2f} | "
        f"{len(files) / full:.0f} | {full / baseline:.2f} |",
        "",
        "Reproduce: `.venv/bin/python benchmarks/ingest_speed.py` (in-process, excludes the",
        "~2 s of Python start-up and imports that the `medres` command adds).",
        "",
        *series_section(args.data, args.against, args.series_repeat),
        f"Command: `.venv/bin/python benchmarks/ingest_speed.py --against {args.against}`",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
