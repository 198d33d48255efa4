"""``checkpoints/last.pt``: written after every epoch, read by ``resume=True``.

A checkpoint holds the live and averaged weights, the optimiser and scheduler, and the
:class:`~medres.train.state.RunState`; its fingerprint (the resolved config and the
cohort's scans and labels) refuses a resume with other settings or data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch

from medres.cohort import Cohort
from medres.errors import ConfigError
from medres.files import atomic_write, write_text
from medres.train.config import TrainConfig
from medres.train.state import RunState

CHECKPOINT = Path("checkpoints") / "last.pt"


def refuse_overwrite(out_dir: Path, resume: bool) -> None:
    """An interrupted run's checkpoint is continued (``resume``) or left alone."""
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise ConfigError(
            f"{out_dir} holds an interrupted run ({checkpoint}); add --resume to continue "
            "it, or choose a new output folder"
        )


def config_fingerprint(config: TrainConfig, cohort: Cohort) -> str:
    """Identifies the run a checkpoint belongs to (config + cohort scans and labels)."""
    # trust is fitted after training; a run may resume on another device; names are shown,
    # not learnt
    text = config.model_dump_json(exclude={"trust", "device", "class_names"})
    text += cohort.fingerprint()
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(
    path: Path, fingerprint: str, model, averaged, optimizer, scheduler, state: RunState
) -> None:
    plain = state.to_checkpoint()
    payload = {
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "averaged": averaged.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": {**plain, "history": json.dumps(plain["history"])},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(
    path: Path, fingerprint: str, model, averaged, optimizer, scheduler
) -> RunState:
    """Restores the weights, optimiser and scheduler in place; returns the run's state."""
    if not path.is_file():
        raise ConfigError(f"nothing to resume: no checkpoint at {path}; run without --resume")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["fingerprint"] != fingerprint:
        raise ConfigError(
            f"{path} belongs to a run with another configuration or cohort; "
            "use the same settings to resume, or a new output folder"
        )
    model.load_state_dict(payload["model"])
    averaged.load_state_dict(payload["averaged"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    state = payload["state"]
    return RunState.from_checkpoint({**state, "history": json.loads(state["history"])})


def write_history(path: Path, history: list[dict]) -> None:
    """``metrics.csv``: one row per epoch."""
    write_text(path, pd.DataFrame(history).to_csv(index=False))
