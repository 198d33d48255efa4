"""The model registry: which bundle is the champion, which were archived or rejected,
and every verdict that decided it (``medres promote``).

A JSON file::

    {"format": 1,
     "models": {"<bundle id>": {"id", "path", "parent_id", "status", "created",
                                "status_since", "metrics"}},
     "events": [{"time", "action", "champion", "challenger", "verdict", "reasons",
                 "comparison", "forced_reason", "actor"}]}

``status`` is ``champion`` (one at a time), ``archived`` (a former champion) or
``rejected`` (a challenger that was not promoted). Bundles are referred to, never copied
or overwritten: every version stays loadable from its own folder, and the registry
refuses to record one that no longer verifies.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medres.bundle import read_manifest
from medres.errors import ConfigError
from medres.files import FORMAT_KEY, check_format, write_json
from medres.retrain.compare import read_comparison

FORMAT = 1  # registry.json's format version (docs/formats.md#registryjson)
READS = (1,)  # the major versions read_registry reads


def promote(
    registry_path: str | Path,
    comparison_dir: str | Path,
    *,
    force_reason: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Record a ``medres compare`` verdict; returns (the registry, whether the challenger
    became champion).

    A ``promote`` verdict (or ``force_reason``, a human's documented override) makes the
    challenger champion and archives the champion; a ``keep`` verdict records the
    challenger as rejected.

    Raises:
        ConfigError: no comparison in ``comparison_dir``; the registry names another
            champion than the one compared against; a bundle no longer verifies.
    """
    comparison = read_comparison(comparison_dir)
    registry = read_registry(registry_path)
    champion, challenger = comparison["champion"], comparison["challenger"]
    _check_promotable(registry, champion, challenger, comparison_dir)
    now = _now()
    metrics = {t["name"]: t["metrics"] for t in comparison["test_sets"]}
    models = registry["models"]
    models.setdefault(champion["id"], _entry(champion, "champion", now, {}))
    promoted = comparison["verdict"] == "promote" or bool(force_reason)
    if promoted:
        models[champion["id"]].update(status="archived", status_since=now)
    models[challenger["id"]] = _entry(
        challenger, "champion" if promoted else "rejected", now, metrics
    )
    registry["events"].append(
        {
            "time": now,
            "action": "promote" if promoted else "keep",
            "champion": champion["id"],
            "challenger": challenger["id"],
            "verdict": comparison["verdict"],
            "reasons": comparison["reasons"],
            "comparison": str(Path(comparison_dir).resolve()),
            "forced_reason": force_reason,
            "actor": _actor(),
        }
    )
    write_json(registry_path, registry)
    return registry, promoted


def _check_promotable(
    registry: dict[str, Any],
    champion: dict[str, Any],
    challenger: dict[str, Any],
    comparison_dir: str | Path,
) -> None:
    """Refuse a comparison against another champion than the registry's, of a bundle
    with itself, or of a bundle whose folder no longer holds what was compared
    (``champion`` / ``challenger``: the comparison's descriptions, with id and path)."""
    current = current_champion(registry)
    if current is not None and current["id"] != champion["id"]:
        raise ConfigError(
            f"the registry's champion is {current['id']} ({current['path']}), but this "
            f"comparison was against {champion['id']}; compare the challenger with the "
            "current champion first"
        )
    if champion["id"] == challenger["id"]:
        raise ConfigError(f"{comparison_dir} compares bundle {champion['id']} with itself")
    for model in (champion, challenger):
        manifest = read_manifest(model["path"])  # BundleError names the file if it changed
        if manifest.id != model["id"]:
            raise ConfigError(
                f"{model['path']} now holds bundle {manifest.id}, not {model['id']} that "
                "was compared; compare again"
            )


def read_registry(path: str | Path) -> dict[str, Any]:
    """The registry at ``path`` (an empty one if the file does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return {"format": FORMAT, "models": {}, "events": []}
    try:
        registry = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a readable medres registry ({e})") from e
    if not isinstance(registry, dict):
        raise ConfigError(f"{path} is not a medres registry (no JSON object)")
    check_format(path, registry.get(FORMAT_KEY), READS, ConfigError)
    if not isinstance(registry.get("models"), dict) or not isinstance(registry.get("events"), list):
        raise ConfigError(f"{path} is not a medres registry (no 'models' and 'events')")
    registry[FORMAT_KEY] = FORMAT  # rewritten by promote in this medres's format
    return registry


def current_champion(registry: dict[str, Any]) -> dict[str, Any] | None:
    return next((m for m in registry["models"].values() if m["status"] == "champion"), None)


def _entry(model: dict[str, Any], status: str, now: str, metrics: dict) -> dict[str, Any]:
    return {
        "id": model["id"],
        "path": model["path"],
        "parent_id": model.get("parent_id"),
        "created": model.get("created"),
        "status": status,
        "status_since": now,
        "metrics": metrics,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
