"""The scans of a prediction run, decoded and checked in DataLoader workers.

Each item is one discovered scan: its content hash (the resume key), then — unless it
was already predicted — the decoded :class:`~medres.io.Volume`, the checks against the
bundle (dimensionality, channels, modality) and the bundle's own preprocessing. A scan
that fails any step becomes a failure row; nothing here raises for a bad scan.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from medres.bundle import TrainedOn
from medres.errors import ScanContentError, ScanError, ScanReadError, first_line
from medres.explain import transform_with_meta
from medres.files import sha256_file
from medres.io import Volume, read_scan
from medres.io.discover import ScanSource
from medres.io.names import safe_text
from medres.io.volume import is_colour
from medres.transforms import PreprocessSpec, build_transform

# DICOM modalities that are the same kind of image (CR and DX: two detector
# technologies for one projection radiograph), so a model trained on one accepts the other.
MODALITY_FAMILIES = ({"CR", "DX", "DR", "RG"}, {"OP", "XC"})
# what medres calls PNG/JPEG and NIfTI files, which carry no DICOM modality
FILE_KINDS = ("IMAGE", "NIFTI")


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
    (``expected``; same-family modalities count as equal). A bundle trained on PNG/JPEG
    images (``IMAGE``) and no DICOM refuses every DICOM modality: its images' modality,
    contrast and photometry are unknown (``medres ingest --modality`` declares them).
    NIfTI files (``NIFTI``, usually a lossless conversion of DICOM) are not checked, nor
    are files without a DICOM header, nor anything against a bundle that recorded none.

    Raises:
        ScanContentError: naming both modalities.
    """
    if not modality or modality in FILE_KINDS or not expected:
        return
    known = [m for m in expected if m not in FILE_KINDS]
    if not known and "IMAGE" in expected:
        raise ScanContentError(
            scan_id,
            f"is a DICOM {modality} scan but the bundle was trained on PNG/JPEG images of "
            f"unknown modality; predict it with a bundle trained on {modality} DICOM, or, if "
            f"the training images were {modality} exports, ingest them again with "
            f"`--modality {modality}` and retrain",
        )
    family = next((f for f in MODALITY_FAMILIES if modality in f), {modality})
    if known and not family & set(known):
        raise ScanContentError(
            scan_id,
            f"is a {modality} scan but the bundle was trained on {', '.join(known)} scans; "
            "predict it with a bundle trained on this modality",
        )


def check_colour(scan_id: str, volume: Volume, trained_grey: bool) -> None:
    """Refuse a colour image for a bundle whose training scans were grey
    (``trained_grey``: :meth:`medres.bundle.TrainedOn.grey`). A grey image stored as RGB
    is grey (:func:`medres.io.volume.is_colour`).

    Raises:
        ScanContentError: naming the colour found and what the bundle was trained on.
    """
    if trained_grey and is_colour(volume):
        raise ScanContentError(
            scan_id,
            f"is a colour image ({volume.channels} channels that differ) but the bundle was "
            "trained on grey images; averaging its colours to grey would feed the model an "
            "image unlike its training data: predict it with a bundle trained on colour images",
        )


class PredictScans(torch.utils.data.Dataset):
    """Scans → :class:`Item` (hash, skip if done, read, check, preprocess)."""

    def __init__(
        self,
        scans: list[ScanSource],
        spec: PreprocessSpec,
        *,
        trained: TrainedOn,
        done: set[tuple[str, str]],
        keep_volume: bool = False,
    ) -> None:
        self.scans = scans
        self.transform = build_transform(spec)
        self.modalities = trained.modalities
        self.trained_grey = trained.grey(spec.in_channels)
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
            check_colour(scan.scan_id, volume, self.trained_grey)
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
