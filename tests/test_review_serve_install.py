"""`medres review serve` from a normal install (a wheel, not `pip install -e`).

The checkout's medres/, app/, pyproject.toml and README.md are built into a wheel offline
(``pip wheel --no-deps --no-build-isolation --no-index``); the wheel must carry the review
app (app/ as the ``medres_app`` package) and every module of medres. It is then installed
with ``pip install --target`` into a folder that the child processes put first on their
path, run from a directory outside the checkout, so neither the checkout's medres nor its
app/ can be what they import or serve: the installed ``medres`` console script serves the
app on 127.0.0.1 until ``/_stcore/health`` answers, and the installed app signs a reviewer
in and shows the worklist page (its pages are found beside the installed Home.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from medres.review import ReviewStore, add_user
from medres.review.ui import STORE_ENV, USERS_ENV

PROJECT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
HEALTH_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(wheel, target folder it is installed into, a working directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("review_install")
    source = tmp / "source"  # a copy: the build writes build/ and *.egg-info where it runs
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("medres", "app"):
        shutil.copytree(PROJECT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT / name, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), ".",
         cwd=source)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("medres-*.whl")
    site = tmp / "site"
    _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return wheel, site, elsewhere


def _environment(site: Path, **extra: str) -> dict[str, str]:
    """The installed copy first on the path; nothing of the checkout's."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**environment, "PYTHONPATH": str(site), **extra}


def test_the_wheel_carries_the_review_app_and_every_medres_module(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = sorted(p.name for p in (PROJECT / "app" / "views").glob("*.py"))
    assert pages  # the app has pages to ship
    app = {"medres_app/Home.py"} | {f"medres_app/views/{page}" for page in pages}
    assert app <= names, f"the wheel lacks {sorted(app - names)}"
    assert not any(n.startswith("app/") for n in names)  # no top-level `app` package
    # pyproject.toml lists medres' packages (the find directive cannot map app/ to
    # medres_app): a new subpackage missing from that list would be missing from the wheel
    modules = {
        p.relative_to(PROJECT).as_posix()
        for p in (PROJECT / "medres").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert modules <= names, (
        f"the wheel lacks {sorted(modules - names)}: add their packages to "
        "[tool.setuptools] packages in pyproject.toml"
    )


def test_the_installed_app_is_found_and_shows_its_pages(installed, tmp_path):
    _, site, elsewhere = installed
    db, users = tmp_path / "review.db", tmp_path / "users.json"
    ReviewStore(db).close()
    add_user(users, "dr_lee", PASSWORD)
    probe = f"""
import json, medres
from streamlit.testing.v1 import AppTest
from medres.review.serve import app_script
at = AppTest.from_file(str(app_script()), default_timeout=60).run()
signed_out = [t.value for t in at.title]
at.text_input(key="sign_in_name").input("dr_lee")
at.text_input(key="sign_in_password").input({PASSWORD!r})
at = at.button(key="sign_in_submit").click().run()
print(json.dumps({{
    "medres": medres.__file__, "script": str(app_script()), "signed_out": signed_out,
    "signed_in": [t.value for t in at.title], "info": [i.value for i in at.info],
    "exceptions": [e.value for e in at.exception],
}}))
"""
    environment = _environment(site, **{STORE_ENV: str(db), USERS_ENV: str(users)})
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=elsewhere,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["medres"]).is_relative_to(site)  # the installed library, not the checkout
    assert Path(seen["script"]) == (site / "medres_app" / "Home.py").resolve()
    assert seen["exceptions"] == []
    assert seen["signed_out"] == ["medres review"]  # views/sign_in.py, beside Home.py
    assert seen["signed_in"] == ["Worklist"]  # views/worklist.py
    assert any("No prediction run is loaded" in info for info in seen["info"])


def test_the_installed_medres_review_serve_starts_the_app(installed, tmp_path):
    _, site, elsewhere = installed
    db = tmp_path / "review.db"
    ReviewStore(db).close()
    add_user(tmp_path / "review_users.json", "dr_lee", PASSWORD)  # beside the store: the default
    medres = site / "bin" / "medres"  # the console script the wheel installs
    assert medres.is_file()
    port = _free_port()
    server = subprocess.Popen(
        [str(medres), "review", "serve", "--store", str(db), "--port", str(port)],
        cwd=elsewhere,
        env=_environment(site),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, ended as a whole below
    )
    url = f"http://127.0.0.1:{port}/_stcore/health"
    answer = None
    try:
        deadline = time.monotonic() + HEALTH_SECONDS
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    answer = reply.read().decode()
            except OSError:
                time.sleep(0.3)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already when it failed to start
            os.killpg(server.pid, signal.SIGTERM)
        try:
            output, _ = server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            output, _ = server.communicate()
    said = output.decode(errors="replace")
    assert answer == "ok", (
        f"no health answer at {url} within {HEALTH_SECONDS} s "
        f"(server exit status {server.returncode}):\n{said}"
    )
    assert f"http://127.0.0.1:{port}" in " ".join(said.split())
