"""The README's PACS figure: medres's DICOM results as a hospital viewer shows them.

Starts Orthanc (Debian's 1.10, with Orthanc Explorer) inside a private network namespace
(tests/pacs_servers.py; needs root), uploads a 4-image chest CR study (the shipped
PneumoniaMNIST test PNGs wrapped by tests/pacs_data.py, made-up patient DEMO^PATIENT),
trains a 2-epoch bundle, then runs the real CLI: ``medres pacs pull`` (DICOMweb),
``medres predict --explain``, ``medres pacs push --bundle`` (DIMSE). Writes:

- ``OUT/pacs_orthanc.png``: Orthanc Explorer's study page (the CR series beside medres's
  Structured Report and secondary-capture series), screenshotted with Playwright driving
  /usr/bin/chromium, beside Orthanc's preview of one secondary capture (Grad-CAM overlay);
- ``OUT/pacs_sr.txt``: DCMTK's ``dsrdump`` of one SR as Orthanc returns it.

Run: ``python benchmarks/pacs_figure.py -o docs/figures/``
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pydicom
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medres.cli import app  # noqa: E402
from tests.conftest import EXAMPLE  # noqa: E402
from tests.pacs_data import cr_cohort_folder, cr_study, train_quick  # noqa: E402
from tests.pacs_servers import Orthanc, private_network, run_orthanc  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PATIENT_ID, PATIENT_NAME = "DEMO-0001", "DEMO^PATIENT"


def medres(*args: object, env: dict | None = None) -> str:
    """Run ``medres ARGS`` in-process (in the namespace), print the command, fail loudly."""
    print("$ medres " + " ".join(map(str, args)), flush=True)
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    print(result.output.rstrip(), flush=True)
    if result.exit_code != 0:
        raise SystemExit(f"medres {args[0]} failed with exit code {result.exit_code}")
    return result.output


def series_of(orthanc: Orthanc, study_id: str) -> dict[str, dict]:
    """Orthanc's series of a study by SeriesDescription."""
    series = orthanc.get(f"/studies/{study_id}/series").json()
    return {s["MainDicomTags"].get("SeriesDescription", ""): s for s in series}


def screenshot_study(orthanc: Orthanc, study_id: str) -> Image.Image:
    """Orthanc Explorer's study page, once its series list is filled."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(
                viewport={"width": 1100, "height": 640},
                http_credentials={"username": orthanc.user, "password": orthanc.password},
            )
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{orthanc.rest_url}/app/explorer.html#study?uuid={study_id}")
            page.wait_for_function("document.querySelectorAll('#list-series li a').length >= 3")
            page.wait_for_timeout(500)
            png = page.screenshot(full_page=False)
        finally:
            browser.close()
    return Image.open(io.BytesIO(png)).convert("RGB")


def referring(orthanc: Orthanc, series: dict, source_uid: str) -> str:
    """The instance of ``series`` whose tags name the source image's SOPInstanceUID."""
    for instance_id in series["Instances"]:
        if source_uid in orthanc.get(f"/instances/{instance_id}/tags?simplify").text:
            return instance_id
    raise SystemExit(f"no instance of series {series['ID']} refers to {source_uid}")


def preview(orthanc: Orthanc, instance_id: str) -> Image.Image:
    """Orthanc's rendering of an instance (GET /instances/{id}/preview, a PNG)."""
    return Image.open(io.BytesIO(orthanc.get(f"/instances/{instance_id}/preview").content))


def dsrdump(orthanc: Orthanc, instance_id: str, folder: Path) -> str:
    """``dsrdump`` of the SR instance as Orthanc returns it, made-up patient lines left out."""
    path = folder / "sr.dcm"
    path.write_bytes(orthanc.get(f"/instances/{instance_id}/file").content)
    text = subprocess.run(
        ["dsrdump", "+Pl", str(path)], capture_output=True, text=True, check=True
    ).stdout
    lines = [ln for ln in text.splitlines() if PATIENT_ID not in ln and "DEMO" not in ln]
    return "\n".join(lines) + "\n"


def figure(explorer: Image.Image, panels: dict[str, Image.Image], path: Path) -> None:
    """The screenshot on the left, the titled ``panels`` stacked on the right; a palette PNG."""
    fig = plt.figure(figsize=(12.5, 5.6), dpi=100)
    grid = fig.add_gridspec(len(panels), 2, width_ratios=[3.3, 1])
    left = fig.add_subplot(grid[:, 0])
    left.imshow(explorer)
    left.set_title("Orthanc Explorer: the CR study after `medres pacs push`", fontsize=11)
    left.set_axis_off()
    for row, (title, image) in enumerate(panels.items()):
        ax = fig.add_subplot(grid[row, 1])
        ax.imshow(image, interpolation="nearest", cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(colors=128).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "figures")
    out_dir = parser.parse_args().out
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    print(f"machine: {os.cpu_count()} CPU(s), {platform.platform()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name, private_network():
        tmp = Path(tmp_name)
        print("training a 2-epoch bundle on 96 CR studies (tests/pacs_data.py)", flush=True)
        cohort = cr_cohort_folder(tmp / "cohort")
        bundle = train_quick(cohort, tmp / "bundle", "--set", "positive_class=pneumonia")
        with run_orthanc(tmp / "orthanc", explorer=True) as orthanc:
            pngs = sorted((EXAMPLE / "test").glob("*.png"))[:4]
            files = cr_study(tmp / "study", pngs, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
            uploaded = [orthanc.upload(f) for f in files]
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            study_uid, study_id = str(first.StudyInstanceUID), uploaded[0]["ParentStudy"]
            secrets = {"MEDRES_PACS_USER": orthanc.user, "MEDRES_PACS_PASSWORD": orthanc.password}
            dimse = f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
            scans, results = tmp / "scans", tmp / "out"
            medres("pacs", "pull", orthanc.http_url, "--study", study_uid, "-o", scans, env=secrets)
            medres("predict", bundle, scans, "-o", results, "--explain")
            medres("pacs", "push", results, dimse, "--bundle", bundle, env=secrets)

            series = series_of(orthanc, study_id)
            for description, s in series.items():
                print(f"Orthanc series: {description} ({len(s['Instances'])} instances)")
            (sr,) = [s for d, s in series.items() if d.startswith("medres report")]
            (sc,) = [s for d, s in series.items() if d.startswith("medres overlay")]
            # the study's first image, its overlay and its SR
            sr_id = referring(orthanc, sr, str(first.SOPInstanceUID))
            sc_id = referring(orthanc, sc, str(first.SOPInstanceUID))
            (out_dir / "pacs_sr.txt").write_text(dsrdump(orthanc, sr_id, tmp))
            panels = {
                "source CR image (Orthanc preview)": preview(orthanc, uploaded[0]["ID"]),
                "medres overlay of it (Grad-CAM,\nsecondary capture; Orthanc preview)": preview(
                    orthanc, sc_id
                ),
            }
            explorer = screenshot_study(orthanc, study_id)
        figure(explorer, panels, out_dir / "pacs_orthanc.png")
    seconds = time.monotonic() - start
    print(f"wrote {out_dir / 'pacs_orthanc.png'}, {out_dir / 'pacs_sr.txt'} in {seconds:.0f} s")
    print("Orthanc stopped")


if __name__ == "__main__":
    main()
