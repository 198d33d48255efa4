"""`medres drift` / medres.retrain.drift on the shipped PneumoniaMNIST chest X-rays.

The "new" cohorts are real images with a documented acquisition shift applied:

- ``shifted``: 120 validation X-rays (90 pneumonia, 30 normal: prevalence 0.75 instead of
  the test split's 0.50) with contrast halved around a brighter level and sensor noise
  added (``0.5 * x + 90 + N(0, 6)``, clipped to 8 bits), as from a second site's
  detector with a different window and a noisier sensor.
- ``inverted``: 40 test X-rays with inverted grey levels (``255 - x``), as when a
  MONOCHROME1 image is shown as MONOCHROME2; no labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from typer.testing import CliRunner

from medres.cli import app
from medres.cohort import Cohort, build_cohort
from medres.errors import ConfigError
from medres.retrain.drift import drift_report
from medres.retrain.drift_write import drift_markdown, write_drift
from tests.conftest import EXAMPLE, small_cohort

ALPHA = 0.01


def _shift_copies(paths, folder: Path, transform) -> Path:
    folder.mkdir(parents=True)
    for path in paths:
        pixels = np.asarray(Image.open(EXAMPLE / path), dtype=np.float64)
        shifted = np.clip(np.rint(transform(pixels)), 0, 255).astype(np.uint8)
        Image.fromarray(shifted).save(folder / Path(path).name)
    return folder


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Cohort:
    """120 lower-contrast, noisier copies of validation X-rays, 75 % pneumonia, split test."""
    labels = pd.read_csv(EXAMPLE / "labels.csv")
    val = labels[labels["split"] == "val"]
    chosen = pd.concat([val[val["label"] == 1].head(90), val[val["label"] == 0].head(30)])
    rng = np.random.default_rng(0)
    folder = _shift_copies(
        chosen["path"],
        tmp_path_factory.mktemp("shifted") / "scans",
        lambda x: 0.5 * x + 90 + rng.normal(0, 6, x.shape),
    )
    table = pd.DataFrame(
        {"path": [Path(p).name for p in chosen["path"]], "label": chosen["label"], "split": "test"}
    )
    table.to_csv(folder / "labels.csv", index=False)
    cohort, _ = build_cohort(folder, labels=folder / "labels.csv", site="site B")
    cohort.save(folder.parent / "shifted.parquet")
    return cohort


@pytest.fixture(scope="module")
def inverted(tmp_path_factory) -> Path:
    """40 test X-rays with inverted grey levels, unlabelled: a saved cohort."""
    labels = pd.read_csv(EXAMPLE / "labels.csv")
    paths = labels[labels["split"] == "test"]["path"].head(40)
    folder = _shift_copies(paths, tmp_path_factory.mktemp("inverted") / "scans", lambda x: 255 - x)
    cohort, _ = build_cohort(folder)
    return cohort.save(folder.parent / "inverted.parquet")


@pytest.fixture(scope="module")
def old_path(example_cohort, tmp_path_factory) -> Path:
    return example_cohort.save(tmp_path_factory.mktemp("old") / "old.parquet")


@pytest.fixture(scope="module")
def bundle(example_cohort, tmp_path_factory) -> Path:
    """A 1-epoch chest X-ray bundle (calibrated, with an OOD model)."""
    tmp = tmp_path_factory.mktemp("drift_bundle")
    cohort = small_cohort(example_cohort, tmp / "c.parquet", sizes=(32, 16, 16))
    quick = ["--epochs", "1", "--set", "batch_size=16", "--set", "num_workers=0"]
    trained = CliRunner().invoke(
        app, ["train", "--cohort", str(cohort), *quick, "-o", str(tmp / "b")]
    )
    assert trained.exit_code == 0, trained.output
    return tmp / "b"


def test_detects_acquisition_and_prevalence_shift(example_cohort, shifted):
    report = drift_report(example_cohort, shifted, split="test", max_scans=200, alpha=ALPHA)

    assert (report.old.rows, report.new.rows) == (300, 120)
    assert (report.old.sampled, report.new.sampled) == (200, 120)
    assert (report.old.unreadable, report.new.unreadable) == (0, 0)
    shares = report.labels.table.set_index("value")
    assert shares.loc["1", "old_share"] == pytest.approx(0.5)
    assert shares.loc["1", "new_share"] == pytest.approx(0.75)
    assert report.labels.p_value < 1e-3
    intensity = {s.name: s for s in report.intensity}
    sd, mean = intensity["intensity sd"], intensity["intensity mean"]
    assert sd.new < 0.6 * sd.old and sd.p_value < 1e-6  # contrast halved, a little noise
    assert mean.new > mean.old and mean.p_value < 1e-6  # 0.5 x + 90 brightens these X-rays
    one = report.old.scans.iloc[0]  # per-scan statistics are in the PNG's own 0-255 units
    pixels = np.asarray(Image.open(EXAMPLE / one["scan_id"]), dtype=np.float64)
    assert (one["mean"], one["sd"]) == pytest.approx((pixels.mean(), pixels.std()))
    assert (one["p1"], one["p99"]) == pytest.approx(tuple(np.percentile(pixels, [1, 99])))
    assert report.sites.table.set_index("value").loc["site B", "new_share"] == 1.0
    text = "\n".join(report.findings)
    assert "label 1 share 0.50 → 0.75 (χ² p < 0.001)" in text
    assert "median intensity sd" in text and "median intensity mean" in text
    assert "site site B share 0.00 → 1.00" in text
    assert "no shift detected" not in text


def test_two_halves_of_one_cohort_show_no_drift(example_cohort):
    rows = example_cohort.ok[example_cohort.ok["split"].isin(["val", "test"])]
    order = np.random.default_rng(3).permutation(len(rows))
    half = len(rows) // 2
    first, second = (
        Cohort(rows.iloc[order[part]].reset_index(drop=True), dict(example_cohort.meta))
        for part in (slice(0, half), slice(half, None))
    )
    report = drift_report(first, second, max_scans=150, alpha=ALPHA)

    assert report.labels.p_value > ALPHA
    assert all(s.p_value > ALPHA for s in report.intensity if s.test)
    assert report.findings == [
        "no shift detected at α = 0.01 (label and site / modality mix, intensity)"
    ]


def test_unreadable_scan_is_counted_not_fatal(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for png in sorted((EXAMPLE / "test").glob("*.png"))[:12]:
        shutil.copy(png, folder / png.name)
    cohort, _ = build_cohort(folder)
    victim = folder / "test_00003.png"
    victim.write_bytes(victim.read_bytes()[:60])  # truncated after ingest

    report = drift_report(cohort, cohort, max_scans=12)

    assert report.new.unreadable == 1 and len(report.new.scans) == 11
    assert report.old.unreadable == 1
    assert "1 of 12 sampled new scans are unreadable" in report.findings
    assert "only 11 scans in the smaller sample" in " ".join(report.findings)
    assert report.labels is None and "has no labels" in report.label_note


def test_bundle_flags_inverted_scans_out_of_distribution(example_cohort, inverted, bundle):
    report = drift_report(example_cohort, inverted, bundle, split=None, max_scans=40)

    model = {s.name: s for s in report.model.shifts}
    ood = model["OOD rate"]
    assert ood.old < 0.25 and ood.new > 0.75 and ood.p_value < 1e-6
    assert f"OOD rate {ood.old:.4g} → {ood.new:.4g}" in " ".join(report.findings)
    assert 0.5 <= model["confidence"].old <= 1 and 0.5 <= model["confidence"].new <= 1
    assert report.model.calibrated and report.model.failed == {"old": 0, "new": 0}
    assert report.model.predicted.table["new_share"].sum() == pytest.approx(1)
    flagged = report.new.scans["ood"].astype(bool)
    assert flagged.mean() == pytest.approx(ood.new)  # the per-scan rows agree with the rate
    assert report.labels is None  # the inverted cohort is unlabelled: no prevalence, no crash
    assert "the new cohort has no labels" in drift_markdown(report)


def test_cli_writes_report_with_plots(old_path, shifted, bundle, tmp_path):
    new_path = tmp_path / "new.parquet"
    shifted.save(new_path)
    out = tmp_path / "drift"
    args = [str(old_path), str(new_path), "--bundle", str(bundle), "--split", "test"]
    result = CliRunner().invoke(app, ["drift", *args, "--max-scans", "40", "-o", str(out)])

    assert result.exit_code == 0, result.output
    assert "label 1 share 0.50 → 0.75" in result.output
    data = json.loads((out / "drift.json").read_text())
    assert data["old"]["source"] == str(old_path.resolve())
    assert data["new"]["fingerprint"] == shifted.fingerprint()
    assert data["new"]["sampled"] == 40 and data["labels"]["p_value"] < 1e-3
    assert [s["name"] for s in data["model"]["shifts"]] == ["confidence", "OOD rate"]
    markdown = (out / "drift.md").read_text()
    links = [line[line.index("](") + 2 : -1] for line in markdown.splitlines() if "![" in line]
    assert links == ["drift_prevalence.png", "drift_intensity.png", "drift_confidence.png"]
    for name in links:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300
    assert all(f"- {line}" in markdown for line in data["findings"])
    scans = pd.read_csv(out / "drift_scans.csv")
    assert scans["cohort"].value_counts().to_dict() == {"old": 40, "new": 40}
    assert scans["confidence"].between(0.5, 1).all()


def test_markdown_nests_in_another_report(example_cohort, shifted, tmp_path):
    report = drift_report(example_cohort, shifted, split="test", max_scans=30)
    write_drift(report, tmp_path / "compare" / "drift")
    section = drift_markdown(report, plot_prefix="drift/", level=2)

    assert section.startswith("## Cohort drift\n") and "\n### Findings\n" in section
    links = [line[line.index("](") + 2 : -1] for line in section.splitlines() if "![" in line]
    assert links == ["drift/drift_prevalence.png", "drift/drift_intensity.png"]
    assert all((tmp_path / "compare" / link).is_file() for link in links)


def test_cli_help_has_example():
    result = CliRunner().invoke(app, ["drift", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "medres drift" in result.output


def _unreadable_cohort(tmp_path: Path) -> Path:
    folder = tmp_path / "broken"
    folder.mkdir()
    for png in sorted((EXAMPLE / "test").glob("*.png"))[:3]:
        (folder / png.name).write_bytes(png.read_bytes()[:60])  # truncated PNGs
    cohort, _ = build_cohort(folder)
    assert (cohort.table["status"] == "error").all()
    return cohort.save(tmp_path / "broken.parquet")


def _volume_cohort(tmp_path: Path) -> Path:
    folder = tmp_path / "mri"
    folder.mkdir()
    shutil.copy(Path(NIBABEL_DATA) / "anatomical.nii", folder / "anatomical.nii")
    cohort, _ = build_cohort(folder)
    return cohort.save(tmp_path / "mri.parquet")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_readable_scans", "has no readable scans (3 rows, none with status=ok)"),
        ("unknown_split", "has no readable 'holdout' scans; choose --split among"),
        ("3d_scans_2d_bundle", "takes 2D scans (preset xray_2d) but the new cohort holds 3D"),
    ],
)
def test_bad_input_gives_clear_error(case, expected, old_path, bundle, tmp_path):
    new, extra = str(old_path), []
    if case == "no_readable_scans":
        new = str(_unreadable_cohort(tmp_path))
    elif case == "unknown_split":
        extra = ["--split", "holdout"]
    else:
        new, extra = str(_volume_cohort(tmp_path)), ["--bundle", str(bundle)]
    result = CliRunner().invoke(
        app, ["drift", str(old_path), new, *extra, "-o", str(tmp_path / "out")]
    )

    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_library_refuses_bad_settings(example_cohort):
    with pytest.raises(ConfigError, match="max_scans >= 1"):
        drift_report(example_cohort, example_cohort, max_scans=0)
