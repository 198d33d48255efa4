"""Training on several processes: ``torchrun --nproc_per_node=N -m medres train ...``.

PyTorch's own engine does the work: torchrun starts the processes (ranks) and sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`start` joins them into a process group
(gloo on CPUs, NCCL on GPUs) and :func:`~medres.train.fit` wraps the model in
``DistributedDataParallel``, which averages the gradients of every step across ranks.
What medres adds is which scans each rank holds and how the ranks agree:

- each rank reads and caches only its shard of the training scans (:func:`shard`:
  every N-th row), padded like ``DistributedSampler`` pads, by repeating the shard's
  first scans, so that every rank takes the same number of steps;
- validation scores every validation scan exactly once, each on one rank
  (:func:`shard` without padding), and :func:`gather` puts the outputs back in the
  split's order on every rank, so the selection metric is the one a single process
  computes for the same weights, and every rank makes the same selection;
- a decision that depends on a clock (the time limit) is rank 0's (:func:`agree`);
- only rank 0 writes (checkpoints, ``metrics.csv``, the bundle), after
  :func:`same_on_every_rank` has checked that every rank selected the same weights.

One process (no torchrun) is rank 0 of 1: nothing here communicates.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

TIMEOUT = timedelta(minutes=10)  # a collective that waits longer ends the run with an error


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank``
    on its node (the GPU it takes)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_env() -> Ranks:
    """The ranks torchrun set in the environment; one process without them."""
    return Ranks(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """Under torchrun on GPUs each rank takes the GPU of its local rank."""
    if ranks.distributed and device.type == "cuda":
        return torch.device(f"cuda:{ranks.local_rank}")
    return device


def start(ranks: Ranks, device: torch.device) -> None:
    """Join the process group (gloo on CPUs, NCCL on GPUs), once per process."""
    if ranks.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)


def stop(ranks: Ranks) -> None:
    """Leave the process group (after the last collective)."""
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: pd.DataFrame, ranks: Ranks, *, pad: bool) -> pd.DataFrame:
    """This rank's rows: every ``world``-th row from row ``rank``. ``pad``: repeat the
    shard's first rows until it is as long as the longest shard (every rank then takes the
    same number of training steps, as with ``DistributedSampler``)."""
    if not ranks.distributed:
        return rows
    mine = rows.iloc[ranks.rank :: ranks.world]
    longest = -(-len(rows) // ranks.world)
    if pad and 0 < len(mine) < longest:
        mine = pd.concat([mine, mine.iloc[: longest - len(mine)]])
    return mine


def gather(outputs: np.ndarray, ranks: Ranks, total: int) -> np.ndarray:
    """Every rank's outputs for its :func:`shard` (unpadded), back in the rows' order:
    (total, ...) on every rank.

    Raises:
        RuntimeError: the shards do not add up to ``total`` rows (a scan scored twice or
            not at all).
    """
    if not ranks.distributed:
        return outputs
    parts: list[Any] = [None] * ranks.world
    dist.all_gather_object(parts, outputs)
    if sum(len(p) for p in parts) != total:
        raise RuntimeError(
            f"validation outputs of {[len(p) for p in parts]} scans across ranks do not "
            f"add up to the split's {total}"
        )
    full = np.empty((total, *outputs.shape[1:]), dtype=outputs.dtype)
    for r, part in enumerate(parts):
        full[r :: ranks.world] = part
    return full


def agree(value: Any, ranks: Ranks) -> Any:
    """Rank 0's ``value`` on every rank (for decisions that read a clock)."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def same_on_every_rank(state: dict[str, torch.Tensor], ranks: Ranks) -> None:
    """Check that every rank selected the same weights, batch-norm statistics included
    (they should: gradients are averaged, buffers broadcast, the selection agreed).

    Raises:
        RuntimeError: the ranks' weights differ (the bundle would depend on which rank
            wrote it).
    """
    if not ranks.distributed:
        return
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    digests: list[Any] = [None] * ranks.world
    dist.all_gather_object(digests, digest.hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {ranks.world} ranks selected different weights; report this")


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` (gradients averaged across ranks, its
    batch-norm buffers broadcast from rank 0 at every forward pass); itself for one
    process."""
    if not ranks.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
