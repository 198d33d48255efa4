"""The review app in a real browser: `medres review serve` on 127.0.0.1, driven by
Playwright through Debian's chromium (/usr/bin/chromium; `make test` installs it).

The store holds a real ``medres predict --explain`` run of a 1-epoch 3D bundle over
AdrenalMNIST3D CT volumes (../shared/data/medmnist); without that file the run is the
shipped 2D chest X-rays and the test moves the window-level slider instead of a slice
slider.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medres.cli import app
from medres.review import ReviewStore, add_user
from tests.conftest import SHARED_DATA, predict_example_run

CHROMIUM = Path("/usr/bin/chromium")
ADRENAL = SHARED_DATA / "medmnist" / "adrenalmnist3d.npz"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not at /usr/bin/chromium; `make test` installs it "
    "(apt-get install chromium)",
)


def _predict_3d(tmp: Path) -> Path:
    """A 1-epoch 3D bundle on 8 AdrenalMNIST3D volumes per class and split, predicted
    with Grad-CAM over 6 test volumes; returns the predict OUTDIR."""
    from medres.datasets.medmnist import export_medmnist
    from medres.predict import PredictOptions, predict_folder

    export_medmnist(ADRENAL, tmp / "adrenal", per_class=8, progress=False)
    runner = CliRunner()
    cohort = str(tmp / "cohort.parquet")
    labels = str(tmp / "adrenal" / "labels.csv")
    quick = ["--epochs", "1", "--set", "batch_size=8", "--set", "num_workers=0"]
    steps = [
        ["ingest", str(tmp / "adrenal"), "--labels", labels, "-o", cohort],
        ["train", "--cohort", cohort, *quick, "-o", str(tmp / "bundle")],
    ]
    for step in steps:
        result = runner.invoke(app, step)
        assert result.exit_code == 0, result.output
    scans = tmp / "incoming"
    scans.mkdir()
    for volume in sorted((tmp / "adrenal" / "test").glob("*.nii.gz"))[:6]:
        (scans / volume.name).write_bytes(volume.read_bytes())
    options = PredictOptions(explain=True, workers=0)
    predict_folder(tmp / "bundle", scans, tmp / "out", options)
    return tmp / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"medres review serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the review app did not answer at {url} within {seconds} s")


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    """(url, store file, 3D?) of a running `medres review serve` on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("review_browser")
    if ADRENAL.exists():
        outdir, is_3d = _predict_3d(tmp), True
    else:
        outdir, is_3d = predict_example_run(request.getfixturevalue("example_cohort"), tmp), False
    db = tmp / "review.db"
    with ReviewStore(db) as store:
        store.load_run(outdir)
    add_user(tmp / "review_users.json", "dr_lee", PASSWORD)  # beside the store: the default
    port = _free_port()
    command = [sys.executable, "-m", "medres", "review", "serve", "--store", str(db)]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, ended as a whole below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server)
        yield url, db, is_3d
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _slider(page, label: str):
    return page.locator('[data-testid="stSlider"]').filter(has_text=label).get_by_role("slider")


def _settle(page) -> None:
    """Wait until the app has finished every rerun the last actions started: a widget
    touched mid-rerun is replaced under the pointer (the stApp's script state is
    Streamlit's own signal, the one its end-to-end tests wait on)."""
    page.wait_for_timeout(300)  # a rerun just asked for may not have started yet
    page.locator(
        '[data-testid="stApp"][data-test-script-state="notRunning"]'
    ).wait_for(state="attached", timeout=60_000)


def _choose(page, combobox: str, option: str, attempts: int = 5) -> None:
    """Open a Streamlit selectbox and pick `option`, retrying when a rerun re-rendered it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_role("combobox", name=combobox)
    choice = page.get_by_role("option", name=option, exact=True)
    for _ in range(attempts):
        _settle(page)
        box.click()  # opens the list of classes
        try:
            choice.wait_for(state="visible", timeout=5_000)
            choice.click(timeout=5_000)
            return
        except PlaywrightTimeout:  # a rerun replaced the box while it opened
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {combobox!r} in {attempts} tries")


def test_a_reviewer_signs_in_scrolls_a_case_and_records_a_disagreement(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, db, is_3d = served
    with ReviewStore(db, create=False) as store:
        first = store.worklist().iloc[0]
        classes = store.case(int(first["case_id"]))["classes"]
    other = next(c for c in classes if c != first["predicted_class"])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(30_000)
            page.goto(url)
            page.get_by_label("Reviewer name").fill("dr_lee")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
            expect(page.get_by_role("button", name="Next case")).to_be_visible()
            expect(page.get_by_text("In this list")).to_be_visible()
            expect(page.get_by_test_id("stDataFrame")).to_be_visible()
            page.wait_for_timeout(1500)  # the table draws on a canvas after it appears
            page.screenshot(path=str(tmp_path / "review_worklist.png"))
            page.get_by_role("button", name="Next case").click()
            expect(page.get_by_role("heading", name=f"Case {first['scan_id']}")).to_be_visible()

            if is_3d:  # scroll the axial slices: the caption under the picture follows
                slider = _slider(page, "Axial slice")
                before = int(slider.input_value())
                slider.focus()
                for _ in range(3):
                    slider.press("ArrowRight")
                total = slider.get_attribute("max")
                expect(page.get_by_text(f"axial {before + 3}/{total}")).to_be_visible()
            else:  # a radiograph: move the window level, the preset turns to manual
                slider = _slider(page, "Window level")
                slider.focus()
                slider.press("ArrowRight")
                preset = page.get_by_role("combobox", name="Window preset")
                expect(preset).to_have_value("manual")

            _settle(page)
            page.get_by_text("Show the model's output").click()  # hidden until asked
            _settle(page)
            page.get_by_text("Grad-CAM overlay").click()  # off until asked, too
            _settle(page)
            page.get_by_text("Disagree", exact=True).click()
            _choose(page, "Corrected label (when you disagree)", other)
            page.get_by_label("Notes").fill("seen in the browser test")
            page.set_viewport_size({"width": 1400, "height": 1500})  # the whole case view
            page.screenshot(path=str(tmp_path / "review_case_view.png"))
            page.get_by_role("button", name="Save decision").click()
            expect(page.get_by_text(f"Saved: disagree → {other} by dr_lee.")).to_be_visible()
        finally:
            browser.close()

    for name in ("review_worklist.png", "review_case_view.png"):
        assert (tmp_path / name).stat().st_size > 10_000
        if os.environ.get("MEDRES_SCREENSHOTS"):  # README's: MEDRES_SCREENSHOTS=docs pytest ...
            shutil.copy(tmp_path / name, Path(os.environ["MEDRES_SCREENSHOTS"]) / name)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT case_id, reviewer, decision, corrected_label, notes FROM decisions"
        ).fetchall()
        audit = conn.execute("SELECT actor, action, case_id FROM audit WHERE action = 'decide'")
        audited = audit.fetchall()
    case_id = int(first["case_id"])
    assert rows == [(case_id, "dr_lee", "disagree", other, "seen in the browser test")]
    assert audited == [("dr_lee", "decide", case_id)]
