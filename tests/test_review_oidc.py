"""Organisation sign-in (OpenID Connect, ``st.login``) against a real identity provider.

The provider is oidc-provider-mock (a Flask app on Authlib, in the dev extra), served by
this process on 127.0.0.1; the review app gets its ``[auth]`` section from a 0600
``review_auth.toml`` beside the store (``medres.review.serve``'s default), and the client
is registered with the provider first, so a wrong client id, secret or redirect URI fails
the sign-in. Chromium (Debian's, as in tests/test_review_browser.py) goes to the
provider's authorization page and back, and signs out through its end-session page.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import urllib.request
from pathlib import Path

import pytest
import werkzeug.serving

from medres.errors import ReviewError
from medres.review import ReviewStore
from medres.review.serve import AUTH_FILE, check_auth_file, streamlit_command
from medres.review.users import default_users_path
from tests.test_review_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    _free_port,
    _settle,
    server_group,
)

EMAIL = "ada.lovelace@hospital.example"
ORGANISATION_BUTTON = "Sign in with your organisation account"


def _write_auth(path: Path, mode: int = 0o600, **values: str) -> Path:
    """An auth file holding ``[auth]`` with ``values``, created with ``mode`` (no moment
    at which a 0600 file is readable by others)."""
    lines = ["[auth]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as file:
        file.write("\n".join(lines) + "\n")
    os.chmod(path, mode)  # whatever the umask
    return path


def _auth_values(app_url: str, provider_url: str, client_id: str, secret: str) -> dict:
    return {
        "redirect_uri": f"{app_url}/oauth2callback",
        "cookie_secret": secrets.token_urlsafe(32),
        "client_id": client_id,
        "client_secret": secret,
        "server_metadata_url": f"{provider_url}/.well-known/openid-configuration",
    }


@pytest.fixture(scope="module")
def provider():
    """The base URL of an OpenID Connect provider on 127.0.0.1 that knows only the
    clients registered with it (``POST /oauth2/clients``) and asks for a nonce."""
    import oidc_provider_mock

    wsgi = oidc_provider_mock.app(require_client_registration=True, require_nonce=True)
    server = werkzeug.serving.make_server("127.0.0.1", 0, wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _register_client(provider: str, redirect_uri: str) -> tuple[str, str]:
    """Register the review app with the provider: its (client_id, client_secret)."""
    body = json.dumps({"redirect_uris": [redirect_uri]}).encode()
    request = urllib.request.Request(
        f"{provider}/oauth2/clients",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        client = json.load(reply)
    return client["client_id"], client["client_secret"]


@pytest.fixture(scope="module")
def served_oidc(provider, review_run, tmp_path_factory):
    """(app URL, store file) of the review app served with organisation sign-in: the auth
    file is found beside the store, as ``medres review serve`` finds it."""
    tmp = tmp_path_factory.mktemp("review_oidc")
    db = tmp / "review.db"
    with ReviewStore(db) as store:
        store.load_run(review_run)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    client_id, client_secret = _register_client(provider, f"{url}/oauth2callback")
    _write_auth(tmp / AUTH_FILE, **_auth_values(url, provider, client_id, client_secret))
    argv, environment = streamlit_command(str(db), default_users_path(db), port=port)
    assert argv[argv.index("--secrets.files") + 1] == str(tmp / AUTH_FILE)
    with server_group(argv, url, environment):
        yield url, db


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not at /usr/bin/chromium; `make test` installs it "
    "(apt-get install chromium)",
)
def test_an_organisation_account_signs_in_and_out_at_the_identity_provider(served_oidc, provider):
    from playwright.sync_api import expect, sync_playwright

    url, db = served_oidc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url)
            _settle(page)
            page.get_by_role("button", name=ORGANISATION_BUTTON).click()
            # the identity provider's own page; refused there: back, not signed in
            expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
            assert page.url.startswith(f"{provider}/oauth2/authorize?"), page.url
            page.get_by_role("button", name="Deny").click()
            page.wait_for_url(f"{url}/**")
            expect(page.get_by_role("button", name=ORGANISATION_BUTTON)).to_be_visible()
            expect(page.get_by_text("Signed in as")).to_have_count(0)

            _settle(page)
            page.get_by_role("button", name=ORGANISATION_BUTTON).click()
            # this time the reader says who they are at the provider
            expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
            page.get_by_placeholder("sub").fill(EMAIL)
            page.get_by_role("button", name="Authorize", exact=True).click()

            page.wait_for_url(f"{url}/**")
            expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
            expect(page.get_by_text(f"Signed in as {EMAIL}")).to_be_visible()
            page.reload()  # the identity cookie keeps the session
            expect(page.get_by_text(f"Signed in as {EMAIL}")).to_be_visible()

            _settle(page)
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_role("heading", name="End Session")).to_be_visible()
            page.get_by_role("button", name="End session").click()
            page.wait_for_url(f"{url}/**")
            expect(page.get_by_role("button", name=ORGANISATION_BUTTON)).to_be_visible()
            page.reload()  # the identity cookie is gone: still signed out
            expect(page.get_by_role("button", name=ORGANISATION_BUTTON)).to_be_visible()
            expect(page.get_by_text("Signed in as")).to_have_count(0)
            expect(page.get_by_role("heading", name="Worklist")).to_have_count(0)
        finally:
            browser.close()

    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT actor, action FROM audit WHERE action LIKE 'sign%' ORDER BY id"
        ).fetchall()
    # one sign-in per browser session (the reload after signing in is a second one)
    assert rows == [(EMAIL, "sign_in"), (EMAIL, "sign_in"), (EMAIL, "sign_out")]


def test_the_auth_file_is_refused_when_others_can_read_it_or_it_lacks_a_key(tmp_path):
    secret = secrets.token_urlsafe(24)
    values = _auth_values("https://review.example.org", "https://idp.example.org", "medres", secret)
    path = _write_auth(tmp_path / AUTH_FILE, mode=0o644, **values)
    with pytest.raises(ReviewError, match=f"chmod 600 {path}"):
        check_auth_file(path)

    os.chmod(path, 0o600)
    assert check_auth_file(path) == path
    argv, environment = streamlit_command(str(tmp_path / "review.db"), tmp_path / "users.json")
    assert argv[argv.index("--secrets.files") + 1] == str(path)  # found beside the store
    for secret in (values["client_secret"], values["cookie_secret"]):  # the path only
        assert not any(secret in text for text in [*argv, *environment.values()])

    without_secret = {k: v for k, v in values.items() if k != "client_secret"}
    _write_auth(path, **without_secret)
    with pytest.raises(ReviewError, match="lacks client_secret in its \\[auth\\] section"):
        streamlit_command(str(tmp_path / "review.db"), tmp_path / "users.json")

    elsewhere = _write_auth(tmp_path / "idp.toml", **{**values, "redirect_uri": "https://x/"})
    with pytest.raises(ReviewError, match="must end with /oauth2callback"):
        streamlit_command(str(tmp_path / "review.db"), tmp_path / "users.json", auth=elsewhere)

    with pytest.raises(ReviewError, match="cannot read the auth file"):
        check_auth_file(tmp_path / "missing.toml")

    path.unlink()  # no auth file: local accounts only, no secrets file for Streamlit
    argv, _ = streamlit_command(str(tmp_path / "review.db"), tmp_path / "users.json")
    assert "--secrets.files" not in argv


def test_review_serve_refuses_an_auth_file_others_can_read(tmp_path):
    from typer.testing import CliRunner

    from medres.cli import app
    from medres.review import ReviewStore

    db = tmp_path / "review.db"
    ReviewStore(db).close()
    auth = tmp_path / "elsewhere.toml"
    auth.write_text('[auth]\nclient_secret = "s3cret-value"\n')
    auth.chmod(0o644)
    result = CliRunner().invoke(app, ["review", "serve", "--store", str(db), "--auth", str(auth)])
    assert result.exit_code != 0
    assert f"chmod 600 {auth}" in " ".join(result.output.split())
    assert "s3cret-value" not in result.output
