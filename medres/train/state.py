"""What a training run carries from epoch to epoch (and through a checkpoint): which
epoch is selected (:class:`Selection`), the history, the time spent and why it stopped."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import torch


class StopReason(enum.Enum):
    """Why training ended. The values are the words ``bundle.json`` (``training.stopped_by``)
    and the model card have always shown."""

    LAST_EPOCH = "the last epoch"
    EARLY_STOPPING = "early stopping"
    TIME_LIMIT = "the time limit"


@dataclass
class Selection:
    """The selected epoch (``best_*``; 0 = none yet) and the best score seen so far
    (``top_score``), which decides near-ties (:func:`~medres.train.steps.selects`)."""

    best_score: float = -math.inf
    best_loss: float = math.inf
    top_score: float = -math.inf
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None

    def keep(self, epoch: int, score: float, loss: float, model: torch.nn.Module) -> None:
        """Select ``epoch``, keeping a copy of ``model``'s weights."""
        self.best_score, self.best_loss, self.best_epoch = score, loss, epoch
        self.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class RunState:
    """Epochs done, their ``metrics.csv`` rows, seconds spent (across resumes), the
    selection, and why the run stopped."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: StopReason = StopReason.LAST_EPOCH
    selection: Selection = field(default_factory=Selection)

    def to_checkpoint(self) -> dict:
        """The checkpoint's ``state``: the flat dict of plain values earlier medres wrote,
        so a run interrupted before this layout resumes (and vice versa)."""
        s = self.selection
        return {
            "epoch": self.epoch,
            "best_score": s.best_score,
            "best_loss": s.best_loss,
            "top_score": s.top_score,
            "best_epoch": s.best_epoch,
            "best_model": s.best_model,
            "history": self.history,
            "seconds": self.seconds,
            "stopped_by": self.stopped_by.value,
        }

    @classmethod
    def from_checkpoint(cls, state: dict) -> RunState:
        selection = Selection(
            state["best_score"],
            state["best_loss"],
            state["top_score"],
            state["best_epoch"],
            state["best_model"],
        )
        return cls(
            state["epoch"],
            state["history"],
            state["seconds"],
            StopReason(state["stopped_by"]),
            selection,
        )
