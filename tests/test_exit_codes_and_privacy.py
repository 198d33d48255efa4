"""Exit codes a scheduler can act on, and outputs holding patient ids kept private (0600)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from medres.cli import main
from tests.conftest import EXAMPLE

PROJECT = Path(__file__).resolve().parents[1]
SECRET = "patient P-SECRET-123"  # in the message of a provoked internal error


def _medres(monkeypatch, *args: str) -> int:
    """Run the real console-script entry point in-process; its exit code."""
    monkeypatch.setattr(sys, "argv", ["medres", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    code = exit_.value.code
    return 0 if code is None else code


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def scans(tmp_path) -> Path:
    """Six shipped chest X-rays with a labels file that names their patients."""
    folder = tmp_path / "scans"
    folder.mkdir()
    rows = []
    for i, png in enumerate(sorted((EXAMPLE / "test").glob("*.png"))[:6]):
        shutil.copy(png, folder / png.name)
        rows.append({"path": png.name, "label": i % 2, "patient_id": f"P{i // 2}"})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)
    return folder


@pytest.fixture
def private_tmp(monkeypatch, tmp_path) -> Path:
    """The temp folder where an internal error's traceback goes."""
    folder = tmp_path / "system_tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.delenv("MEDRES_TRACEBACK", raising=False)
    return folder


def _boom(*args, **kwargs):
    raise RuntimeError(SECRET)


def test_exit_codes_a_scheduler_can_act_on(monkeypatch, capsys, scans, tmp_path, private_tmp):
    labels = ["--labels", scans / "labels.csv"]
    # 0: done
    assert _medres(monkeypatch, "ingest", scans, *labels, "-o", tmp_path / "c.parquet") == 0
    assert _medres(monkeypatch, "--help") == 0
    # 1: done, with recorded failures under --strict
    (scans / "broken.dcm").write_bytes(b"")
    out = tmp_path / "c2.parquet"
    assert _medres(monkeypatch, "ingest", scans, "-o", out, "--strict") == 1
    assert out.is_file()  # done: the manifest is written, the failure is a row of it
    # 2: bad usage, or refused input (a MedresError)
    assert _medres(monkeypatch, "ingest", scans) == 2  # -o missing
    assert _medres(monkeypatch, "ingest", tmp_path / "nowhere", "-o", out) == 2
    # 3: an internal error (a bug): one red line, the traceback in a private file
    capsys.readouterr()
    monkeypatch.setattr("medres.cohort.ingest.discover", _boom)
    assert _medres(monkeypatch, "ingest", scans, "-o", tmp_path / "c3.parquet") == 3
    said = capsys.readouterr().err
    assert "bug in medres" in said and "RuntimeError" in said
    assert SECRET not in said and "Traceback" not in said  # no values on the terminal
    [saved] = private_tmp.glob("medres-error-*.txt")
    assert str(saved) in said and len(said.strip().splitlines()) == 1
    assert _mode(saved) == 0o600
    text = saved.read_text()
    assert "Traceback" in text and SECRET in text and "_boom" in text
    # 130: interrupted
    monkeypatch.setattr("medres.cohort.ingest.discover", _interrupt)
    assert _medres(monkeypatch, "ingest", scans, "-o", tmp_path / "c4.parquet") == 130


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_console_script_entry_maps_an_internal_error_to_3(tmp_path):
    """``python -m medres`` (the same main() as the ``medres`` script) in a fresh process."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("MEDRES_TRACEBACK", None)
    pyproject = (PROJECT / "pyproject.toml").read_text()
    assert 'medres = "medres.cli:main"' in pyproject

    def run(*args):
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    assert run("-m", "medres", "--help").returncode == 0
    assert run("-m", "medres", "ingest").returncode == 2
    provoke = (
        "import sys, medres.cohort.ingest\n"
        f"def boom(*a, **k): raise RuntimeError({SECRET!r})\n"
        "medres.cohort.ingest.discover = boom\n"
        f"sys.argv = ['medres', 'ingest', {str(EXAMPLE)!r}, '-o', 'c.parquet']\n"
        "from medres.cli import main\n"
        "main()\n"
    )
    crashed = run("-c", provoke)
    assert crashed.returncode == 3, crashed.stderr
    assert "bug in medres (RuntimeError)" in crashed.stderr and SECRET not in crashed.stderr
    assert len(crashed.stderr.strip().splitlines()) == 1  # one line, no traceback
    [saved] = tmp_path.glob("medres-error-*.txt")
    assert _mode(saved) == 0o600 and SECRET in saved.read_text()


def test_outputs_holding_patient_ids_are_created_0600(monkeypatch, scans, tmp_path, review_run):
    from medres.evaluate.job import evaluate_bundle
    from medres.predict.store import ResultStore
    from medres.review import ReviewStore

    private = []
    # the cohort manifest, written by a real `medres ingest`
    cohort = tmp_path / "cohort.parquet"
    labels = scans / "labels.csv"
    assert _medres(monkeypatch, "ingest", scans, "--labels", labels, "-o", cohort) == 0
    private.append(cohort)
    # predict's tables (conftest's review_run is a finished `medres predict` OUTDIR) ...
    private += [review_run / n for n in ("predictions.parquet", "predictions.csv", "failures.csv")]
    # ... and the chunks written while a run goes
    store = ResultStore(tmp_path / "predict_out", {"bundle": "b"})
    store.write_part([{"scan_id": "a.png", "patient_id": "P0", "input_hash": "h"}])
    private += list((tmp_path / "predict_out" / ".parts").glob("part-*.parquet"))
    # the review store (and its WAL files while open) and its export
    db = tmp_path / "review.db"
    with ReviewStore(db) as review:
        review.load_run(review_run)
        wal = [p for p in (Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
        assert [oct(_mode(p)) for p in (db, *wal)] == [oct(0o600)] * (1 + len(wal))
        review.export_labels(tmp_path / "reviewed.csv")
    private += [db, tmp_path / "reviewed.csv"]
    # evaluate's per-scan failures table
    report_dir = tmp_path / "report"
    evaluate_bundle(review_run.parent / "b", review_run.parent / "c.parquet", report_dir)
    private.append(report_dir / "failures.csv")
    # drift's per-scan table
    drift = tmp_path / "drift"
    assert _medres(monkeypatch, "drift", cohort, cohort, "-o", drift, "--max-scans", "6") == 0
    private.append(drift / "drift_scans.csv")

    assert len(private) == 9
    modes = {str(p.relative_to(p.parents[1])): oct(_mode(p)) for p in private}
    assert set(modes.values()) == {oct(0o600)}, modes
    # files without patient or scan ids keep the usual permissions
    assert _mode(report_dir / "report.json") == 0o666 & ~_umask()
    assert _mode(review_run / "run.json") == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
