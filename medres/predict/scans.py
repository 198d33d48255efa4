"""The scans of a prediction run, decoded and checked in DataLoader workers.

Each item is one discovered scan: its content hash (the resume key), then — unless it
was already predicted — the decoded :class:`~medres.io.Volume`, the checks against the
bundle (dimensionality, channels, modality) and the bundle's own preprocessing. A scan
that fails any step becomes a failure row; nothing here raises for a bad scan.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from medres.errors import ScanContentError, ScanError, ScanReadError
from medres.explain import transform_with_meta
from medres.files import sha256_file
from medres.io import Volume, read_scan
from medres.io.discover import ScanSource
from medres.transforms import PreprocessSpec, build_transform

# DICOM modalities that are the same kind of image (CR and DX: two detector
# technologies for one projection radiograph), so a model trained on one accepts the other.
MODALITY_FAMILIES = ({"CR", "DX", "DR", "RG"}, {"OP", "XC"})


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
    (``expected``; same-family modalities count as equal). No check when either side is
    unknown: files without a DICOM header (PNG, NIfTI) carry no modality.

    Raises:
        ScanContentError: naming both modalities.
    """
    known = [m for m in expected if m not in ("IMAGE", "NIFTI")]
    if not modality or modality in ("IMAGE", "NIFTI") or not known:
        return
    family = next((f for f in MODALITY_FAMILIES if modality in f), {modality})
    if not family & set(known):
        raise ScanContentError(
            scan_id,
            f"is a {modality} scan but the bundle was trained on {', '.join(known)} scans; "
            "predict it with a bundle trained on this modality",
        )


class PredictScans(torch.utils.data.Dataset):
    """Scans → :class:`Item` (hash, skip if done, read, check, preprocess)."""

    def __init__(
        self,
        scans: list[ScanSource],
        spec: PreprocessSpec,
        *,
        modalities: list[str],
        done: set[tuple[str, str]],
        keep_volume: bool = False,
    ) -> None:
        self.scans = scans
        self.transform = build_transform(spec)
        self.modalities = modalities
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
            # with explanations, the input keeps its spatial history (MetaTensor) so the
            # heatmap maps back to the scan without preprocessing it a second time
            traced = self.keep_volume
            item.image = (
                transform_with_meta(volume, self.transform) if traced else self.transform(volume)
            )
        except ScanError as e:
            item.failure = (stage, type(e).__name__, e.message)
            return item
        if self.keep_volume:
            item.volume = volume
        return item


def failure_row(
    scan_id: str, path: str, stage: str, error_type: str, message: str
) -> dict[str, Any]:
    """DESIGN §3 failure row for one scan."""
    return {
        "scan_id": scan_id,
        "path": path,
        "stage": stage,
        "error_type": error_type,
        "message": message,
    }
