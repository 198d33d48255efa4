"""The review app in a real browser: `medres review serve` on 127.0.0.1, driven by
Playwright through Debian's chromium (/usr/bin/chromium; `make test` installs it).

The store holds a real ``medres predict --explain`` run of a 1-epoch 3D bundle over
AdrenalMNIST3D CT volumes (../shared/data/medmnist); without that file the run is the
shipped 2D chest X-rays and the test moves the window-level slider instead of a slice
slider.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
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
    quick += ["--set", "class_names=0=normal,1=mass"]  # AdrenalMNIST3D's two classes
    quick += ["--set", "precision=fp32"]  # bf16 gave a NaN loss once in a full-suite run
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


@contextlib.contextmanager
def server_group(argv: list[str], url: str, env: dict[str, str] | None = None):
    """Run ``argv`` (a Streamlit server that answers at ``url``) in its own process
    group until it answers; stop the whole group afterwards."""
    server = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, ended as a whole below
    )
    try:
        _wait_until_up(url, server)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@contextlib.contextmanager
def serving(db: Path):
    """``medres review serve`` on ``db`` at a free port of 127.0.0.1: yields its URL."""
    add_user(db.parent / "review_users.json", "dr_lee", PASSWORD)  # beside the store
    port = _free_port()
    command = [sys.executable, "-m", "medres", "review", "serve", "--store", str(db)]
    url = f"http://127.0.0.1:{port}"
    with server_group([*command, "--port", str(port)], url):
        yield url


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
    with serving(db) as url:
        yield url, db, is_3d


@pytest.fixture
def served_run(review_run, tmp_path):
    """(url, store file) of `medres review serve` on a fresh store holding the shipped
    chest X-ray run (21 cases)."""
    db = tmp_path / "review.db"
    with ReviewStore(db) as store:
        store.load_run(review_run)
    with serving(db) as url:
        yield url, db


def _browser(playwright):
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )


def _sign_in_with_keys(page) -> None:
    """Type the name and password and press Enter: no mouse."""
    page.get_by_label("Reviewer name").focus()
    page.keyboard.type("dr_lee")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")


def _slider(page, label: str):
    return page.locator('[data-testid="stSlider"]').filter(has_text=label).get_by_role("slider")


def _settle(page) -> None:
    """Wait until the app has finished every rerun the last actions started: a widget
    touched mid-rerun is replaced under the pointer (the stApp's script state is
    Streamlit's own signal, the one its end-to-end tests wait on)."""
    page.wait_for_timeout(300)  # a rerun just asked for may not have started yet
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        state="attached", timeout=60_000
    )


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
        names = store.case(int(first["case_id"]))["class_names"]  # {label: name}
    other = next(c for c in names if c != first["predicted_class"])
    other_name = names[other]

    with sync_playwright() as playwright:
        browser = _browser(playwright)
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
            table = page.get_by_test_id("stDataFrame").last  # the cases (first: reasons)
            expect(table).to_be_visible()
            page.wait_for_timeout(1500)  # the table draws on a canvas after it appears
            page.screenshot(path=str(tmp_path / "review_worklist.png"))
            _settle(page)
            table.click(position={"x": 18, "y": 35 + 17})  # the first row's selection box
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
            page.get_by_role("button", name="Show the model's output").click()  # or M
            _settle(page)
            page.get_by_text("Grad-CAM overlay").click()  # off until asked, too
            _settle(page)
            page.get_by_label("Notes").fill("seen in the browser test")
            page.get_by_label("Notes").press("Tab")  # the notes are kept when they lose focus
            _settle(page)
            page.set_viewport_size({"width": 1400, "height": 1500})  # the whole case view
            page.screenshot(path=str(tmp_path / "review_case_view.png"))
            page.get_by_role("button", name=f"Disagree: {other_name}").click()
            saved = f"Saved: disagree → {other_name} by dr_lee."
            expect(page.get_by_text(saved)).to_be_visible()
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


def _in_view(page, locator, height: int) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height


def test_twenty_cases_read_with_the_keyboard_only(served_run, capsys):
    """Sign in, N, then per case M (the model's output) and A / D / U, which saves and
    opens the next case: 20 cases in worklist order without the mouse, the decision and
    next / previous in view at 1440 x 900 on every case."""
    from playwright.sync_api import expect, sync_playwright

    url, db = served_run
    with ReviewStore(db, create=False) as store:
        order = store.worklist()[["case_id", "scan_id", "predicted_class"]]
    keys = {"a": "agree", "d": "disagree", "u": "uncertain"}
    intended = [list(keys)[i % 3] for i in range(20)]
    seconds = []
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(url)
            _sign_in_with_keys(page)
            expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
            _settle(page)
            page.keyboard.press("n")
            shown = time.monotonic()
            for i, key in enumerate(intended):
                scan = order["scan_id"].iloc[i]
                expect(page.get_by_role("heading", name=f"Case {scan}")).to_be_visible()
                if i:
                    seconds.append(time.monotonic() - shown)
                shown = time.monotonic()
                _settle(page)
                for name in ("Previous", "Skip"):
                    assert _in_view(page, page.get_by_role("button", name=name), 900), name
                page.keyboard.press("m")
                agree = page.get_by_role("button", name=re.compile("^Agree: "))
                expect(agree).to_be_visible()
                for button in (agree, page.get_by_role("button", name=re.compile("^Disagree"))):
                    assert _in_view(page, button, 900), (scan, button)
                _settle(page)
                page.keyboard.press(key)
            expect(
                page.get_by_role("heading", name=f"Case {order['scan_id'].iloc[20]}")
            ).to_be_visible()
            seconds.append(time.monotonic() - shown)
        finally:
            browser.close()

    with ReviewStore(db, create=False) as store:
        decided = store.worklist(status="all").set_index("case_id")
    for i, key in enumerate(intended):  # each case has the decision meant for it
        row = decided.loc[int(order["case_id"].iloc[i])]
        assert (row["decision"], row["reviewer"]) == (keys[key], "dr_lee"), i
        if key == "d":
            assert row["corrected_label"] not in (None, row["predicted_class"])
    assert pd_isna(decided.loc[int(order["case_id"].iloc[20]), "decision"])
    median = statistics.median(seconds)
    with capsys.disabled():
        print(
            f"\nkeyboard-only reading: median {median:.2f} s from one case to the next "
            f"(20 cases, {min(seconds):.2f}-{max(seconds):.2f} s)"
        )


def pd_isna(value) -> bool:
    return value is None or value != value


def test_a_reload_keeps_the_session_and_a_link_survives_sign_in(served_run):
    """/?case=ID before sign-in opens that case after it; a reload keeps the reader and the
    case; after sign-out neither the page nor the old cookie opens anything, and no
    address the browser fetched returns a picture of the scan."""
    from playwright.sync_api import expect, sync_playwright

    url, db = served_run
    with ReviewStore(db, create=False) as store:
        third = store.worklist().iloc[2]
    heading = f"Case {third['scan_id']}"
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.set_default_timeout(30_000)
            fetched = []
            page.on("response", lambda r: fetched.append((r.url, r.headers.get("content-type"))))
            page.goto(f"{url}/?case={int(third['case_id'])}")
            _sign_in_with_keys(page)
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            _settle(page)
            page.keyboard.press("m")
            expect(page.get_by_role("button", name=re.compile("^Agree: "))).to_be_visible()
            page.reload()
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            expect(page.get_by_text("Signed in as dr_lee")).to_be_visible()
            cookie = next(c for c in context.cookies() if c["name"] == "medres_review")
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_label("Reviewer name")).to_be_visible()
            page.reload()
            expect(page.get_by_label("Reviewer name")).to_be_visible()
            assert not [c for c in context.cookies() if c["name"] == "medres_review"]

            stolen = browser.new_context()  # the cookie from before the sign-out: refused
            stolen.add_cookies([cookie])
            other = stolen.new_page()
            other.goto(f"{url}/case?case={int(third['case_id'])}")
            expect(other.get_by_label("Reviewer name")).to_be_visible()
            expect(other.get_by_role("heading", name=heading)).to_have_count(0)
            stolen.close()
        finally:
            browser.close()

    pictures = [u for u, kind in fetched if (kind or "").startswith("image/")]
    scan_pictures = [u for u in pictures if "/static/" not in u and "favicon" not in u]
    assert not scan_pictures, scan_pictures  # the scan travels inside the session only
    media = [u for u, _ in fetched if re.search(r"//[^/]+/media/", u)]
    assert not media, media  # nothing at an address a client could fetch without a session
