"""One inference path: scans → network outputs, features and failure rows.

Every stage that runs a model over scans goes through this module: ``evaluate``,
``calibrate``, ``retrain compare``, ``drift`` and ``label-issues`` (:func:`score_rows` over
manifest rows), ``predict`` (:class:`ScanInputs` batches from an engine, then
:func:`forward` per bundle) and training's validation (:func:`forward`). ::

    inputs = ScanInputs(scans, read=read_scan, prepare=build_transform(spec))
    for batch in LocalEngine(workers=2).batches(inputs, batch_size=32):   # list[Item]
        good = [item for item in batch if item.image is not None]
        logits, features = forward(model, stack(good), device="cpu")      # (S, N, K), (N, F)

The two choices a deployment makes live here and nowhere else: the ``device`` the
network runs on (:func:`forward`) and the engine that decodes scans into batches
(:class:`LocalEngine`: DataLoader worker processes on this machine, where a worker that
dies costs one scan, not the run). A scan that cannot be read, fails a check or cannot be
preprocessed becomes an :class:`Item` with its ``failure``; nothing here raises for a bad
scan.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from medres.cohort import read_row
from medres.device import autocast, resolve_device
from medres.errors import ScanContentError, ScanError, ScanReadError, first_line
from medres.files import sha256_file
from medres.io import Volume
from medres.io.discover import FAILURE_COLUMNS
from medres.tasks import TaskInfo
from medres.transforms import PreprocessSpec, build_transform
from medres.uncertainty.sampling import View, forward_samples, tta_views

PREFETCH = 4  # batches each decoding worker prepares ahead


def auto_workers(device: torch.device | str = "cpu") -> int:
    """DataLoader workers decoding beside this process: on a CPU one when there is a
    second core (the network needs the rest); feeding a GPU, every core but one, up to 8."""
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(1, min(8, cores - 1))
    return 1 if cores > 1 else 0


def batch_size_for(device: torch.device | str) -> int:
    """Scans per forward pass when scoring: 64 on a CPU, 256 on a GPU (which is idle
    between small batches)."""
    return 256 if torch.device(device).type == "cuda" else 64


@dataclass
class Item:
    """One scan as it leaves a decoding worker.

    ``index`` into the scan list; ``input_hash`` sha256 of its files' bytes (when the
    inputs are fingerprinted; None when they could not be read); ``done`` if these bytes
    were already predicted; ``image`` the network input (C, *spatial) (for explanations a
    MONAI MetaTensor that remembers its spatial steps); ``volume`` the decoded scan (kept
    only when asked); ``failure`` (stage, error type, message) when the scan cannot be
    scored.
    """

    index: int
    input_hash: str | None = None
    done: bool = False
    image: torch.Tensor | None = None
    volume: Volume | None = None
    failure: tuple[str, str, str] | None = None


def input_hash(files: Sequence[str]) -> str:
    """sha256 over the sha256 of each file's bytes, in order (a series: every slice)."""
    outer = hashlib.sha256()
    for name in files:
        outer.update(bytes.fromhex(sha256_file(name)))
    return outer.hexdigest()


class ScanInputs(torch.utils.data.Dataset):
    """Scans → :class:`Item`: (fingerprint,) read, check, preprocess — run in DataLoader
    workers.

    Args:
        scans: anything ``read`` takes (a :class:`~medres.io.discover.ScanSource`, a
            manifest row as a dict ...).
        read: scan → :class:`~medres.io.Volume`; raises ``ScanError`` for a bad scan.
        prepare: volume → network input (C, *spatial), e.g. ``build_transform(spec)``.
        check: (scan, volume) → None; raises ``ScanError`` when the model must not see the
            scan (stage ``validate``).
        done: ``(scan_id, input_hash)`` pairs already scored: the scans (each with
            ``scan_id`` and ``files``) are fingerprinted first, and one in ``done`` is
            skipped undecoded (a resumed run). None: no fingerprints.
        keep_volume: keep the decoded volume on the item (explanations).
    """

    def __init__(
        self,
        scans: Sequence[Any],
        *,
        read: Callable[[Any], Volume],
        prepare: Callable[[Volume], torch.Tensor],
        check: Callable[[Any, Volume], None] | None = None,
        done: Container[tuple[str, str]] | None = None,
        keep_volume: bool = False,
    ) -> None:
        self.scans, self.read, self.prepare, self.check = scans, read, prepare, check
        self.done, self.keep_volume = done, keep_volume

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, i: int) -> Item:
        scan, item = self.scans[i], Item(i)
        if self.done is not None:
            try:
                item.input_hash = input_hash(scan.files)
            except OSError as e:
                message = f"cannot read {e.filename}: {e.strerror}"
                item.failure = ("read", ScanReadError.__name__, message)
                return item
            if (scan.scan_id, item.input_hash) in self.done:
                item.done = True
                return item
        stage = "read"
        try:
            volume = self.read(scan)
            stage = "validate"
            if self.check is not None:
                self.check(scan, volume)
            item.image = self.prepare(volume)
        except ScanError as e:
            item.failure = (stage, type(e).__name__, e.message)
            return item
        except MemoryError:  # a scan within the budgets whose preprocessing still did not fit
            item.failure = (
                stage,
                ScanContentError.__name__,
                "ran out of memory preprocessing the scan",
            )
            return item
        if self.keep_volume:
            item.volume = volume
        return item


@dataclass
class LocalEngine:
    """Decode scans on this machine: ``workers`` DataLoader processes (0: in this process),
    each preparing :data:`PREFETCH` batches ahead."""

    workers: int

    def batches(self, inputs: ScanInputs, batch_size: int) -> Iterator[list[Item]]:
        """The items of ``inputs`` in order, in batches (:func:`decoded_batches`)."""
        return decoded_batches(inputs, self.workers, batch_size)


def decoded_batches(dataset: ScanInputs, workers: int, batch_size: int) -> Iterator[list[Item]]:
    """The dataset's items in order, in batches, decoded by ``workers`` processes.

    A worker that dies (killed for memory, a crash inside a decoder library) costs one
    scan, not the run: the scans that were in flight are decoded again by one worker,
    one at a time, so a second death names its scan, which becomes a failure row.
    """
    pending = list(range(len(dataset)))
    window = 0  # after a death: how many pending scans may have been in flight
    while pending:
        loader = DataLoader(
            Subset(dataset, pending[:window] if window else pending),
            batch_size=1 if window else batch_size,
            collate_fn=list,
            num_workers=min(workers, 1) if window else workers,
            prefetch_factor=(1 if window else PREFETCH) if workers else None,
        )
        try:
            batches = iter(loader)  # starts the workers (and PyTorch's SIGCHLD handler)
            with _deaths_found_by_the_loader():
                for batch in batches:
                    pending = pending[len(batch) :]
                    yield batch
            window = 0
        except RuntimeError as e:
            if not (workers and _worker_died(e)):
                raise
            if window:
                message = (
                    f"the decoding process died while reading this scan ({first_line(e)}); "
                    "it may need more memory than this machine has, or crash a decoder library"
                )
                yield [Item(pending[0], failure=("read", "ScanReadError", message))]
                pending, window = pending[1:], 0
            else:
                window = batch_size * workers * PREFETCH + 1


@contextmanager
def _deaths_found_by_the_loader():
    """Swap PyTorch's SIGCHLD handler for one that does nothing, on the main thread.

    PyTorch's handler raises a worker's death in the main thread wherever it stands,
    e.g. halfway through writing a batch's rows, outside any handler for it. Without it
    the DataLoader finds a dead worker itself when it next waits for a batch (within
    its 5 s status interval), so the death surfaces inside ``decoded_batches``' loop.
    (Not SIG_IGN: that would reap the worker before the DataLoader can see its status.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # PyTorch installs its handler from the main thread only
        return
    previous = signal.signal(signal.SIGCHLD, _nothing)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


def _nothing(signum, frame) -> None:
    """A signal handler that does nothing."""


def _worker_died(error: RuntimeError) -> bool:
    """Whether a DataLoader error says a worker process died (rather than raised)."""
    text = str(error)
    return "DataLoader worker" in text and (
        "exited unexpectedly" in text or "killed by signal" in text
    )


def forward(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
    mc_samples: int = 0,
    views: list[View] | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A :class:`~medres.models.Classifier` (already on ``device``) over one batch.

    Args:
        images: (N, C, *spatial) preprocessed inputs, on any device.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast on ``device``,
            :func:`medres.device.autocast`).
        memory_format: the layout the batch is put in (channels-last is faster on CPU).
        mc_samples, views, seed: MC dropout and test-time views
            (:func:`~medres.uncertainty.sampling.forward_samples`).

    Returns:
        ``(logits (S, N, K), features (N, F))``, float32 on the CPU.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    images = images.to(device, memory_format=memory_format)
    with autocast(device, precision):
        logits, features = forward_samples(
            model, images, mc_samples=mc_samples, views=views, seed=seed
        )
    return logits.float().cpu(), features.float().cpu()


@dataclass
class Scored:
    """A model's outputs on manifest rows: ``rows`` that could be read, their
    ``targets`` (N,) (None when scored without them), the network ``outputs`` (S, N, K)
    (S samples: 1 for a plain pass), the penultimate ``features`` (N, F), and one
    ``failures`` row per scan that could not be read (scan_id, path, stage, error_type,
    message)."""

    rows: pd.DataFrame
    targets: np.ndarray | None
    outputs: np.ndarray
    features: np.ndarray
    failures: pd.DataFrame

    def scores(self, info: TaskInfo) -> np.ndarray:
        """Uncalibrated class probabilities (N, K), or predictions (N,) for regression."""
        return info.outputs_to_scores(self.outputs.mean(0))


def score_rows(
    model,
    info: TaskInfo,
    spec: PreprocessSpec,
    rows: pd.DataFrame,
    *,
    batch_size: int | None = None,
    mc_samples: int = 0,
    tta: bool = False,
    seed: int = 0,
    with_targets: bool = True,
    engine: LocalEngine | None = None,
    device: str | torch.device = "cpu",
) -> Scored:
    """Run ``model`` over manifest rows (with MC dropout samples and test-time views when
    asked); a scan that cannot be read is recorded, not fatal. ``with_targets=False``
    scores unlabelled rows (or labels the model does not know): ``targets`` is None.
    ``model`` is moved to ``device``; ``batch_size`` and the ``engine`` (decoding
    workers) default to what suits the device (:func:`batch_size_for`,
    :func:`auto_workers`)."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device)
    batch_size = batch_size or batch_size_for(device)
    records = rows[["scan_id", "path", "files"]].to_dict("records")
    inputs = ScanInputs(records, read=read_row, prepare=build_transform(spec))
    engine = engine or LocalEngine(auto_workers(device))
    views = tta_views(spec) if tta else None
    kept, outputs, features, failures = [], [], [], []
    for batch in engine.batches(inputs, batch_size):
        good = [item for item in batch if item.failure is None]
        failures += [
            (records[i.index]["scan_id"], records[i.index]["path"], *i.failure)
            for i in batch
            if i.failure is not None
        ]
        if good:
            kept += [item.index for item in good]
            images = torch.stack([item.image for item in good])
            logits, feats = forward(
                model,
                images,
                device=device,
                mc_samples=mc_samples,
                views=views,
                seed=seed + len(kept),
            )
            outputs.append(logits)
            features.append(feats)
    used = rows.iloc[kept]
    k = info.num_outputs
    out = torch.cat(outputs, 1).numpy() if outputs else np.zeros((1, 0, k), "float32")
    feats = torch.cat(features).numpy() if features else np.zeros((0, model.num_features))
    targets = None
    if with_targets:
        targets = info.encode(used["label"]).astype(int if info.kind.classifies else float)
        if not info.kind.classifies:
            targets = targets * info.target_std + info.target_mean
    return Scored(used, targets, out, feats, pd.DataFrame(failures, columns=list(FAILURE_COLUMNS)))
