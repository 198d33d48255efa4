"""MedMNIST export → ingest → split --keep-column split reproduces the official split."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from medres.cli import app
from medres.cohort import Cohort
from tests.conftest import SHARED_DATA

NPZ = SHARED_DATA / "medmnist" / "pneumoniamnist.npz"


@pytest.mark.skipif(not NPZ.exists(), reason=f"{NPZ} not found (../shared/data)")
def test_official_split_sizes_survive_ingest_and_split(tmp_path):
    runner = CliRunner()
    folder, cohort_path = tmp_path / "pneumonia", tmp_path / "cohort.parquet"
    steps = [
        ["datasets", "medmnist", str(NPZ), "-o", str(folder)],
        ["ingest", str(folder), "--labels", str(folder / "labels.csv"), "-o", str(cohort_path)],
        ["split", str(cohort_path), "--keep-column", "split"],
    ]
    for step in steps:
        result = runner.invoke(app, step)
        assert result.exit_code == 0, f"{step[0]}: {result.output}"

    table = Cohort.load(cohort_path).table
    assert (table["status"] == "ok").all()
    assert table["split"].value_counts().to_dict() == {"train": 4708, "test": 624, "val": 524}
    by_split = table.groupby("split")["label"].value_counts().to_dict()
    assert by_split[("train", 0)] == 1214 and by_split[("train", 1)] == 3494
    assert by_split[("test", 0)] == 234 and by_split[("test", 1)] == 390
    assert list(table["shape"].iloc[0]) == [1, 28, 28]
