"""A PACS named by a URL, and the credentials that go with it (never on a command line).

``http(s)://host[:port]/path`` is a DICOMweb service (QIDO-RS, WADO-RS, STOW-RS);
``dicom://AET@host:port`` is a DIMSE peer (C-ECHO, C-FIND, C-GET/C-MOVE, C-STORE) whose
called AE title is ``AET``. Credentials come from environment variables or from a file
that only its owner can read; a URL holding a user or password is refused, because a
command line is visible to every user of the machine and lands in shell histories.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from medres.errors import PacsError

ENV_USER = "MEDRES_PACS_USER"
ENV_PASSWORD = "MEDRES_PACS_PASSWORD"
ENV_TOKEN = "MEDRES_PACS_TOKEN"
ENV_CA_FILE = "MEDRES_PACS_CA_FILE"
ENV_CREDENTIALS = "MEDRES_PACS_CREDENTIALS"  # a credentials file, instead of --credentials

DEFAULT_CALLING_AET = "MEDRES"
DIMSE_DEFAULT_PORT = 104  # the port DICOM registered with IANA

_HOW = (
    f"set {ENV_USER} and {ENV_PASSWORD} (or {ENV_TOKEN} for a bearer token) in the "
    f"environment, or give a JSON credentials file with --credentials (or {ENV_CREDENTIALS}) "
    "readable by you only"
)


@dataclass(frozen=True)
class PacsUrl:
    """A parsed PACS URL.

    Attributes:
        kind: ``"dicomweb"`` or ``"dimse"``.
        text: the URL as written (it holds no credentials: :func:`parse_url` refuses them).
        host, port: the peer's address.
        ae_title: DIMSE only: the peer's (called) AE title.
    """

    kind: Literal["dicomweb", "dimse"]
    text: str
    host: str
    port: int
    ae_title: str | None = None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Credentials:
    """What to authenticate with; ``repr`` never shows a secret.

    Attributes:
        user, password: HTTP basic authentication (DICOMweb).
        token: an OAuth bearer token (DICOMweb); wins over user/password.
        ca_file: a PEM file of certificate authorities to trust for https.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_file: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.token or self.user)


def parse_url(text: str) -> PacsUrl:
    """Parse ``http(s)://host[:port]/path`` or ``dicom://AET@host[:port]``.

    Raises:
        PacsError: another scheme, no host, a bad port or AE title, or credentials in the
            URL (the message says where they go instead).
    """
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if parts.password is not None:  # checked first: no message below may quote it
        raise PacsError(f"credentials do not go into the URL, which logs and shells keep: {_HOW}")
    text = _without_userinfo(text) if scheme != "dicom" else text
    if scheme not in ("http", "https", "dicom"):
        raise PacsError(
            f"{text!r} is not a PACS URL: use http(s)://host:port/dicom-web for DICOMweb or "
            "dicom://AET@host:port for DIMSE (AET: the PACS's AE title)"
        )
    try:
        port = parts.port
        host = parts.hostname
    except ValueError as e:
        raise PacsError(f"{text!r}: bad port ({e}); e.g. dicom://ORTHANC@pacs:4242") from e
    if not host:
        raise PacsError(f"{text!r} names no host; e.g. http://pacs:8042/dicom-web")
    if scheme == "dicom":
        aet = parts.username or ""
        if not aet:
            raise PacsError(
                f"{text!r} names no AE title: write dicom://AET@{host}:{port or 104}, AET being "
                "the PACS's own AE title (ask its administrator)"
            )
        check_ae_title(aet, "the PACS's AE title in the URL")
        shown = f"dicom://{aet}@{host}:{port or DIMSE_DEFAULT_PORT}"
        return PacsUrl("dimse", shown, host, port or DIMSE_DEFAULT_PORT, aet)
    if parts.username is not None or parts.password is not None:
        raise PacsError(f"credentials do not go into the URL, which logs and shells keep: {_HOW}")
    shown = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return PacsUrl("dicomweb", shown, host, port or (443 if scheme == "https" else 80))


def _without_userinfo(text: str) -> str:
    """``text`` with anything before an ``@`` of its network location replaced by ``***``."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", text.strip())


def check_ae_title(aet: str, what: str) -> str:
    """An AE title: 1–16 characters of printable ASCII, no backslash, not only spaces."""
    if not 0 < len(aet) <= 16 or not aet.strip() or "\\" in aet or not aet.isprintable():
        raise PacsError(
            f"{what} {aet!r} is not a valid AE title: 1 to 16 characters, letters, digits, "
            "spaces or punctuation, no backslash"
        )
    if not aet.isascii():
        raise PacsError(f"{what} {aet!r} is not a valid AE title: ASCII characters only")
    return aet


def load_credentials(
    file: str | Path | None = None, env: dict[str, str] | None = None
) -> Credentials:
    """Credentials from ``file`` (or ``$MEDRES_PACS_CREDENTIALS``), else the environment.

    The file is JSON with any of ``user``, ``password``, ``token``, ``ca_file``; it must be
    readable by its owner only (``chmod 600``), as ssh requires of a private key.

    Raises:
        PacsError: the file is missing, unreadable, not JSON, holds other keys, or can be
            read by other users.
    """
    env = dict(os.environ) if env is None else env
    file = file or env.get(ENV_CREDENTIALS)
    if file:
        return _from_file(Path(file))
    return _checked(
        Credentials(
            user=env.get(ENV_USER) or None,
            password=env.get(ENV_PASSWORD) or None,
            token=env.get(ENV_TOKEN) or None,
            ca_file=env.get(ENV_CA_FILE) or None,
        )
    )


def _checked(credentials: Credentials) -> Credentials:
    """Refuse a CA file that is not there, before any connection tries to use it."""
    if credentials.ca_file and not Path(credentials.ca_file).is_file():
        raise PacsError(
            f"the CA file {credentials.ca_file} (MEDRES_PACS_CA_FILE or the credentials "
            "file's ca_file) does not exist: give the path of the hospital's CA certificates"
        )
    return credentials


def _from_file(path: Path) -> Credentials:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as e:
        raise PacsError(f"cannot read the credentials file {path}: {e.strerror}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PacsError(
            f"the credentials file {path} can be read by other users (mode "
            f"{stat.S_IMODE(mode):o}); make it private with: chmod 600 {path}"
        )
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise PacsError(
            f"the credentials file {path} is not JSON (line {e.lineno}); write e.g. "
            '{"user": "medres", "password": "..."}'
        ) from None
    keys = {"user", "password", "token", "ca_file"}
    if not isinstance(values, dict) or set(values) - keys:
        extra = sorted(set(values) - keys) if isinstance(values, dict) else "not an object"
        raise PacsError(
            f"the credentials file {path} holds {extra}: only user, password, token, ca_file"
        )
    return _checked(
        Credentials(**{k: (str(v) if v is not None else None) for k, v in values.items()})
    )
