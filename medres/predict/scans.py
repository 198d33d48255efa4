"""The scans of a prediction run: what :mod:`medres.inference` decodes for ``predict``.

Each item is one discovered scan: its content hash (the resume key), then — unless it
was already predicted — the decoded :class:`~medres.io.Volume`, the checks against what
the bundle trained on (modality, colour) and the bundle's own preprocessing. A scan that
fails any step becomes a failure row; nothing here raises for a bad scan.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from medres.bundle import TrainedOn
from medres.errors import ScanContentError
from medres.explain import transform_with_meta
from medres.inference import ScanInputs
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


def predict_inputs(
    scans: list[ScanSource],
    spec: PreprocessSpec,
    *,
    trained: TrainedOn,
    done: set[tuple[str, str]],
    keep_volume: bool = False,
) -> ScanInputs:
    """The scans of a run as :class:`~medres.inference.ScanInputs`: fingerprinted (a scan
    whose ``(scan_id, input_hash)`` is in ``done`` is skipped undecoded), read, checked
    against what the bundle ``trained`` on (modality, colour) and preprocessed with its
    ``spec``; with ``keep_volume`` (explanations) the input keeps its spatial history
    (MetaTensor) so a heatmap maps back to the scan without preprocessing it twice."""
    return ScanInputs(
        scans,
        read=_read,
        prepare=partial(_prepare, build_transform(spec), keep_volume),
        check=partial(_check, trained.modalities, trained.grey(spec.in_channels)),
        done=done,
        keep_volume=keep_volume,
    )


# module-level functions (not closures): DataLoader workers may be spawned, not forked
def _read(scan: ScanSource) -> Volume:
    volume = read_scan(scan)
    volume.meta["scan_id"] = scan.scan_id
    return volume


def _check(modalities: list[str], grey: bool, scan: ScanSource, volume: Volume) -> None:
    check_modality(scan.scan_id, scan.meta.get("modality"), modalities)
    check_colour(scan.scan_id, volume, grey)


def _prepare(transform, traced: bool, volume: Volume) -> torch.Tensor:
    return transform_with_meta(volume, transform) if traced else transform(volume)


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
