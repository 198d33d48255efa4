"""Reviewer accounts in a local JSON file: salted scrypt hashes, never a password.

File layout (written atomically, mode 0600)::

    {"version": 1,
     "users": {"dr_lee": {"algorithm": "scrypt", "n": 16384, "r": 8, "p": 1,
                          "salt": "<32 hex>", "hash": "<64 hex>", "updated": "<ISO UTC>"}}}

Each user has a random 16-byte salt; :func:`verify` compares with
``hmac.compare_digest`` and spends the same work on unknown users as on known ones.
(hashlib's scrypt is in the standard library, so no password package is needed.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medres.errors import ReviewError
from medres.files import write_json

USERS_FILE = "review_users.json"
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB of memory per hash, ~50 ms
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_DUMMY_SALT = bytes(16)


def default_users_path(store: str | Path | None = None) -> Path:
    """The users file beside a SQLite store file (``review_users.json`` in its folder),
    or in the current folder for a database URL or no store."""
    if store is None or "://" in str(store):
        return Path(USERS_FILE)
    return Path(store).expanduser().resolve().parent / USERS_FILE


def add_user(path: str | Path, name: str, password: str) -> bool:
    """Add a reviewer, or set a new password for an existing one.

    Returns True when the user is new, False when an existing password was replaced.

    Raises:
        ReviewError: an empty password, a name that is not 1–128 letters, digits or
        ``. _ @ -`` (starting with a letter or digit), or an unreadable users file.
    """
    if not _NAME.match(name or ""):
        raise ReviewError(
            f"user name {name!r} is not allowed; use 1-128 letters, digits or . _ @ - (e.g. dr_lee)"
        )
    if not password:
        raise ReviewError("the password is empty; give a password for the new reviewer")
    path = Path(path)
    data = _read(path) if path.exists() else {"version": 1, "users": {}}
    salt = secrets.token_bytes(16)
    new = name not in data["users"]
    data["users"][name] = {
        "algorithm": "scrypt",
        **SCRYPT,
        "salt": salt.hex(),
        "hash": _hash(password, salt, SCRYPT).hex(),
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(path, data, private=True)
    return new


def verify(path: str | Path, name: str, password: str) -> bool:
    """True only when ``name`` is in the users file and ``password`` is theirs.

    False for an unknown user, a wrong or empty password, or a missing or unreadable
    file; never raises.
    """
    try:
        entry = _read(Path(path))["users"].get(name)
        if entry is None or entry.get("algorithm") != "scrypt":
            _hash(password or "", _DUMMY_SALT, SCRYPT)  # same work as a known user
            return False
        params = {k: int(entry[k]) for k in ("n", "r", "p")}
        computed = _hash(password or "", bytes.fromhex(entry["salt"]), params)
        return bool(password) and hmac.compare_digest(computed, bytes.fromhex(entry["hash"]))
    except Exception:  # a login check must answer no, never crash the sign-in page
        return False


def list_users(path: str | Path) -> list[str]:
    """The reviewer names in the users file (empty when it does not exist)."""
    path = Path(path)
    return sorted(_read(path)["users"]) if path.exists() else []


def _hash(password: str, salt: bytes, params: dict[str, int]) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 2**20, **params)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReviewError(f"cannot read the users file {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
        raise ReviewError(f"{path} is not a medres users file (no 'users' object)")
    return data
