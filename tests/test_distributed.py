"""`torchrun --nproc_per_node=2 -m medres train` (gloo, CPU) on the demo cohort.

One uninterrupted 2-process run is the reference for three checks: its recorded
validation metric is what `medres evaluate` gives the bundle on the val split; a run
whose rank 1 is killed mid-epoch stops (bounded in time) and `--resume` ends with the
same metrics; and `torchrun --nproc_per_node=1` trains exactly what one plain process
trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medres.train import CHECKPOINT
from tests.conftest import PROJECT, small_cohort

EPOCHS = "2"
QUICK = ["--set", "batch_size=16", "--set", "num_workers=0", "--set", "precision=fp32"]
TIMEOUT = 300  # seconds any one run may take here (a 2-process epoch takes ~10 s)
ENV = {**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, cohort: Path, out: Path, *extra: str) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    train = ["-m", "medres", "train", "--cohort", str(cohort), "--epochs", EPOCHS, *QUICK]
    return [*launch, f"--nproc_per_node={nproc}", *train, "-o", str(out), *extra]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_process_run(example_cohort, tmp_path_factory):
    """An uninterrupted 2-process run on 96 train / 48 val scans of the demo cohort,
    launched by `medres train --nproc 2` (which runs the command under torchrun)."""
    tmp = tmp_path_factory.mktemp("ddp")
    cohort = small_cohort(example_cohort, tmp / "c.parquet", sizes=(96, 48, 0))
    train = [sys.executable, "-m", "medres", "train", "--cohort", str(cohort)]
    done = _run([*train, "--epochs", EPOCHS, *QUICK, "--nproc", "2", "-o", str(tmp / "whole")])
    return cohort, tmp / "whole", done


def test_two_processes_record_the_metric_evaluate_gives(two_process_run, tmp_path):
    cohort, bundle, done = two_process_run
    training = json.loads((bundle / "bundle.json").read_text())["training"]
    assert training["processes"] == 2 and training["device"] == "cpu"
    history = pd.read_csv(bundle / "metrics.csv")
    assert len(history) == int(EPOCHS)
    assert (history["val_scans"] == 48).all()  # every validation scan, scored once
    recorded = history.loc[history["epoch"] == training["best_epoch"], "val_auroc"].item()

    report = tmp_path / "val"
    evaluate = [sys.executable, "-m", "medres", "evaluate", str(bundle), str(cohort)]
    _run([*evaluate, "--split", "val", "-o", str(report)])
    evaluated = json.loads((report / "report.json").read_text())
    assert evaluated["n_scans"] == 48
    assert abs(evaluated["metrics"]["auroc"]["value"] - recorded) < 1e-6

    # one process wrote: one report of the run, one set of files, no checkpoint left
    assert done.stdout.count("val: binary: 48 scans") == 1, done.stdout[-2000:]
    assert not (bundle / CHECKPOINT).exists()
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith("metrics")) == [
        "metrics.csv",
        "metrics.json",
    ]


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's ranks), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_a_killed_rank_stops_the_run_and_resume_finishes_it(two_process_run, tmp_path):
    cohort, whole, _ = two_process_run
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _torchrun(2, cohort, killed),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = killed / "metrics.csv"
    deadline = time.monotonic() + TIMEOUT
    while not (metrics.exists() and len(pd.read_csv(metrics)) >= 1):
        assert time.monotonic() < deadline and proc.poll() is None, "epoch 1 never finished"
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2
    ranks = _children(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    start = time.monotonic()
    _, stderr = proc.communicate(timeout=120)  # no hang: torchrun stops the other rank
    assert proc.returncode != 0
    assert "SIGKILL" in stderr or "Signal 9" in stderr, stderr[-2000:]
    assert time.monotonic() - start < 120
    assert len(pd.read_csv(metrics)) == 1, "the kill came too late to test a resume"

    _run(_torchrun(2, cohort, killed, "--resume"))
    expected = pd.read_csv(whole / "metrics.csv").drop(columns="seconds")
    resumed = pd.read_csv(metrics).drop(columns="seconds")
    pd.testing.assert_frame_equal(expected, resumed, atol=1e-6, rtol=0)
    assert (killed / "bundle.json").is_file() and not (killed / CHECKPOINT).exists()


def test_torchrun_with_one_process_trains_what_one_plain_process_trains(two_process_run, tmp_path):
    cohort, _, _ = two_process_run
    _run(_torchrun(1, cohort, tmp_path / "torchrun"))
    plain = [sys.executable, "-m", "medres", "train", "--cohort", str(cohort)]
    _run([*plain, "--epochs", EPOCHS, *QUICK, "-o", str(tmp_path / "plain")])
    weights = [(tmp_path / b / "weights.safetensors").read_bytes() for b in ("torchrun", "plain")]
    assert weights[0] == weights[1]
    a, b = (pd.read_csv(tmp_path / b / "metrics.csv") for b in ("torchrun", "plain"))
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
