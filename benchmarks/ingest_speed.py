"""Ingest speed on the 600 DICOM files of dcm_qa_nih, against plain pydicom in the same run.

Baseline: ``pydicom.dcmread(stop_before_pixels=True)`` on every file, the least any
header-based ingest must do. medres then adds discovery, series grouping, geometry
validation and the manifest. Timings are best-of-N wall-clock seconds.

    .venv/bin/python benchmarks/ingest_speed.py [--data ../shared/data] [--repeat 3]

Writes benchmarks/results/ingest.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import pydicom

from medres.cohort import build_cohort
from medres.io.discover import iter_files

RESULTS = Path(__file__).parent / "results" / "ingest.md"


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeat", type=int, default=3)
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
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
