"""The scans of a prediction run, decoded and checked in DataLoader workers.

Each item is one discovered scan: its content hash (the resume key), then — unless it
was already predicted — the decoded :class:`~medres.io.Volume`, the checks against the
bundle (dimensionality, channels, modality) and the bundle's own preprocessing. A scan
that fails any step becomes a failure row; nothing here raises for a bad scan.
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from medres.errors import ScanContentError, ScanError, ScanReadError, first_line
from medres.explain import transform_with_meta
from medres.files import sha256_file
from medres.io import Volume, read_scan
from medres.io.discover import ScanSource
from medres.io.names import safe_text
from medres.transforms import PreprocessSpec, build_transform

# DICOM modalities that are the same kind of image (CR and DX: two detector
# technologies for one projection radiograph), so a model trained on one accepts the other.
MODALITY_FAMILIES = ({"CR", "DX", "DR", "RG"}, {"OP", "XC"})
# what medres calls files that carry no DICOM modality
FILE_KINDS = {"IMAGE": "PNG/JPEG images", "NIFTI": "NIfTI files"}


@dataclass
class Item:
    """One scan as it leaves a worker.

    ``index`` into the run's scan list; ``input_hash`` sha256 of its files' bytes (None
    when they could not be read); ``done`` if this bundle already predicted these bytes;
    ``image`` the network input (C, *spatial) (with explanations a MONAI MetaTensor that
    remembers its spatial steps); ``volume`` the decoded scan (kept only for explanations);
    ``failure`` (stage, error type, message) when the scan cannot be predicted.
    """

    index: int
    input_hash: str | None = None
    done: bool = False
    image: torch.Tensor | None = None
    volume: Volume | None = None
    failure: tuple[str, str, str] | None = None


def input_hash(files: tuple[str, ...]) -> str:
    """sha256 over the sha256 of each file's bytes, in order (a series: every slice)."""
    outer = hashlib.sha256()
    for name in files:
        outer.update(bytes.fromhex(sha256_file(name)))
    return outer.hexdigest()


def check_modality(scan_id: str, modality: str | None, expected: list[str]) -> None:
    """Refuse a scan whose DICOM modality is not among those the bundle was trained on
    (``expected``; same-family modalities count as equal). A bundle trained only on files
    without a modality (PNG/JPEG ``IMAGE``, ``NIFTI``) refuses every DICOM modality: its
    images' contrast, bit depth and photometry are unknown. Files without a DICOM header
    are not checked, nor is anything against a bundle that recorded no modality.

    Raises:
        ScanContentError: naming both modalities.
    """
    if not modality or modality in FILE_KINDS or not expected:
        return
    known = [m for m in expected if m not in FILE_KINDS]
    if not known:
        trained = " and ".join(FILE_KINDS[m] for m in expected if m in FILE_KINDS)
        raise ScanContentError(
            scan_id,
            f"is a DICOM {modality} scan but the bundle was trained on {trained} of unknown "
            f"modality; predict it with a bundle trained on {modality} DICOM, or export it the "
            "way the training images were made",
        )
    family = next((f for f in MODALITY_FAMILIES if modality in f), {modality})
    if not family & set(known):
        raise ScanContentError(
            scan_id,
            f"is a {modality} scan but the bundle was trained on {', '.join(known)} scans; "
            "predict it with a bundle trained on this modality",
        )


def check_colour(scan_id: str, volume: Volume, spec: PreprocessSpec, channels: list[int]) -> None:
    """Refuse a colour image for a grey bundle whose training scans were all grey.

    ``channels``: the channel counts of the training scans (bundle.json ``cohort.channels``;
    empty for bundles from before it was recorded: the preset's channels stand in). An
    RGB image whose channels agree (a grey image stored as RGB, JPEG noise allowed) is grey.

    Raises:
        ScanContentError: naming the colour found and what the bundle was trained on.
    """
    trained = channels or [spec.in_channels]
    if spec.in_channels != 1 or max(trained) >= 3 or volume.channels < 3:
        return
    if not is_grey(volume.array):
        raise ScanContentError(
            scan_id,
            f"is a colour image ({volume.channels} channels that differ) but the bundle was "
            "trained on grey images; averaging its colours to grey would feed the model an "
            "image unlike its training data: predict it with a bundle trained on colour images",
        )


def is_grey(array: np.ndarray, tolerance: float = 0.01) -> bool:
    """Whether the first 3 channels of ``array`` (C, ...) are one grey image: their mean
    absolute difference from their average is at most ``tolerance`` of the value range."""
    rgb = np.asarray(array[:3], dtype=np.float32)
    spread = float(np.abs(rgb - rgb.mean(axis=0)).mean())
    span = float(rgb.max() - rgb.min())
    return spread <= tolerance * span if span > 0 else True


class PredictScans(torch.utils.data.Dataset):
    """Scans → :class:`Item` (hash, skip if done, read, check, preprocess)."""

    def __init__(
        self,
        scans: list[ScanSource],
        spec: PreprocessSpec,
        *,
        modalities: list[str],
        channels: list[int] = (),
        done: set[tuple[str, str]],
        keep_volume: bool = False,
    ) -> None:
        self.scans = scans
        self.transform = build_transform(spec)
        self.modalities = modalities
        self.spec, self.channels = spec, list(channels)
        self.done = done
        self.keep_volume = keep_volume

    def __len__(self) -> int:
        return len(self.scans)

    def __getitem__(self, i: int) -> Item:
        scan = self.scans[i]
        item = Item(i)
        try:
            item.input_hash = input_hash(scan.files)
        except OSError as e:
            item.failure = (
                "read",
                ScanReadError.__name__,
                f"cannot read {e.filename}: {e.strerror}",
            )
            return item
        if (scan.scan_id, item.input_hash) in self.done:
            item.done = True
            return item
        stage = "read"
        try:
            volume = read_scan(scan)
            volume.meta["scan_id"] = scan.scan_id
            stage = "validate"
            check_modality(scan.scan_id, scan.meta.get("modality"), self.modalities)
            check_colour(scan.scan_id, volume, self.spec, self.channels)
            # with explanations, the input keeps its spatial history (MetaTensor) so the
            # heatmap maps back to the scan without preprocessing it a second time
            traced = self.keep_volume
            item.image = (
                transform_with_meta(volume, self.transform) if traced else self.transform(volume)
            )
        except ScanError as e:
            item.failure = (stage, type(e).__name__, e.message)
            return item
        except MemoryError:  # a scan within the budgets whose preprocessing still did not fit
            item.failure = (stage, "ScanContentError", "ran out of memory preprocessing the scan")
            return item
        if self.keep_volume:
            item.volume = volume
        return item


PREFETCH = 4  # batches each decoding worker prepares ahead


def decoded_batches(dataset: PredictScans, workers: int, batch_size: int) -> Iterator[list[Item]]:
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
            for batch in loader:
                pending = pending[len(batch) :]
                with _worker_deaths_held():
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
def _worker_deaths_held():
    """Hold back SIGCHLD while the caller handles a batch: PyTorch's handler raises a
    worker's death in the main thread wherever it stands, so it would interrupt the rows
    being written; held, it is raised here, between batches, and handled above."""
    held = hasattr(signal, "pthread_sigmask")
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        yield
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _worker_died(error: RuntimeError) -> bool:
    """Whether a DataLoader error says a worker process died (rather than raised)."""
    text = str(error)
    return "DataLoader worker" in text and (
        "exited unexpectedly" in text or "killed by signal" in text
    )


def failure_row(
    scan_id: str, path: str, stage: str, error_type: str, message: str
) -> dict[str, Any]:
    """DESIGN §3 failure row for one scan (text made valid UTF-8: :func:`safe_text`)."""
    row = {
        "scan_id": scan_id,
        "path": path,
        "stage": stage,
        "error_type": error_type,
        "message": message,
    }
    return {key: safe_text(value) for key, value in row.items()}
