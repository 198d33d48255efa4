"""The bundles of a ``medres predict`` run as one :class:`Predictor`: a batch of decoded
scans → prediction rows.

A classifier's rows carry the trust layer's calibrated probabilities, conformal set,
OOD score and referral (an ensemble's calibrated probabilities averaged); a regression
bundle's carry the prediction and, with a QA threshold, the referral below it. With
``explain`` each row also names its Grad-CAM heatmap files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from medres import __version__
from medres.bundle import Bundle
from medres.calibrate import softmax
from medres.device import resolve_device, resolve_precision
from medres.errors import BundleError, ConfigError
from medres.explain import grad_cam, map_to_scan, write_explanation
from medres.inference import Item, forward
from medres.io.discover import ScanSource
from medres.io.names import path_text
from medres.predict.runtime import runtime_model
from medres.predict.scans import failure_row
from medres.tasks import label_key
from medres.transforms import build_transform
from medres.uncertainty.sampling import tta_views
from medres.uncertainty.trust import Assessment

if TYPE_CHECKING:
    from medres.predict.job import PredictOptions


@dataclass
class Outcome:
    """What became of one scan: its ``index`` in the run's scan list, ``key``
    (scan_id, input hash; None when its bytes could not be read), and its prediction
    ``row`` or its ``failure`` row (neither: already predicted by an earlier run)."""

    index: int
    key: tuple[str, str] | None
    row: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None


class Predictor:
    """The loaded bundles as one predictor: batch of items → prediction rows."""

    def __init__(
        self, members: list[Bundle], options: PredictOptions, out: Path, checksum: str
    ) -> None:
        # as the runtime sees them: an int8 model has its own trust layer
        members = [member.on_runtime(options.runtime) for member in members]
        self.members, self.options, self.out = members, options, out
        first = members[0]
        self.info, self.trust = first.info, first.trust
        self.flag_below = options.flag_below
        if self.flag_below is None:
            self.flag_below = first.training.flag_below
        if self.flag_below is not None and self.info.kind.classifies:
            raise ConfigError(f"--flag-below applies to regression bundles; {first.path} is not")
        self.views = tta_views(first.spec) if options.tta else None
        compiled = options.runtime != "torch"  # ONNX Runtime, OpenVINO: on the CPU
        self.device = resolve_device("cpu" if compiled else options.device)
        # torch's autocast around the network (a compiled runtime computes in its own)
        self.autocast = (
            "fp32" if compiled else predict_precision(self.device, first.config.precision)
        )
        self.precision = network_precision(options.runtime, self.device, first.config.precision)
        self.transform = build_transform(first.spec)
        dims = first.spec.spatial_dims
        self.memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        if compiled:  # the runtimes take the batch as a contiguous (N, C, *spatial) array
            self.memory_format = torch.contiguous_format
        for member in members:
            member.model.to(self.device, memory_format=self.memory_format)
        # the network each member runs on (Grad-CAM keeps the torch model: members[0].model)
        self.networks = [runtime_model(m, options.runtime) for m in members]
        self.fixed = {
            "bundle_id": "+".join(m.id for m in members),
            "bundle_checksum": checksum,
            "medres_version": __version__,
        }

    def outcomes(self, scans: list[ScanSource], items: list[Item]) -> list[Outcome]:
        """One :class:`Outcome` per item of a decoded batch (``scans[k]`` is the scan of
        ``items[k]``): the good ones predicted together (:meth:`rows`), failures as
        failure rows, scans already predicted as neither."""
        outcomes, good = [], []
        for scan, item in zip(scans, items, strict=True):
            key = (scan.scan_id, item.input_hash) if item.input_hash else None
            if item.failure:
                failure = failure_row(scan.scan_id, path_text(scan.path), *item.failure)
                outcomes.append(Outcome(item.index, key, failure=failure))
            elif item.done:
                outcomes.append(Outcome(item.index, key))
            else:
                good.append((scan, item))
        if good:
            scans, items = [s for s, _ in good], [i for _, i in good]
            rows = self.rows(scans, items)
            for scan, item, row in zip(scans, items, rows, strict=True):
                outcomes.append(Outcome(item.index, (scan.scan_id, item.input_hash), row=row))
        return outcomes

    def rows(self, scans: list[ScanSource], items: list[Item]) -> list[dict[str, Any]]:
        images = torch.stack([item.image.as_subclass(torch.Tensor) for item in items])
        images = images.contiguous(memory_format=self.memory_format)
        seeds = [int(item.input_hash[:15], 16) for item in items]
        outputs, features = [], None
        for network in self.networks:
            logits, feats = forward(
                network,
                images,
                device=self.device,
                precision=self.autocast,
                memory_format=self.memory_format,
                mc_samples=self.options.mc_samples,
                views=self.views,
                seed=seeds,
            )
            outputs.append(logits.numpy().astype(np.float64))
            features = feats.numpy() if features is None else features
        now = pd.Timestamp.now("UTC").isoformat(timespec="seconds")
        rows = [
            {**_scan_fields(s, i), **self.fixed, "predicted_at": now}
            for s, i in zip(scans, items, strict=True)
        ]
        if not self.info.kind.classifies:
            values = np.mean(
                [
                    m.info.outputs_to_scores(o.mean(0))
                    for m, o in zip(self.members, outputs, strict=True)
                ],
                axis=0,
            )
            for row, value in zip(rows, values, strict=True):
                row["prediction"] = float(value)
                if self.flag_below is not None:
                    row["refer"] = bool(value < self.flag_below)
                    row["refer_reason"] = (
                        f"predicted {value:.3f} below the QA threshold {self.flag_below:g}"
                        if row["refer"]
                        else ""
                    )
            shown = np.zeros(len(rows), int)
        else:
            assessment = self._assess(outputs, features)
            self._add_trust(rows, assessment)
            shown = assessment.predicted
        if self.options.explain:
            self._explain(rows, images, items, shown)
        return rows

    def _assess(self, outputs: list[np.ndarray], features: np.ndarray) -> Assessment:
        if len(outputs) == 1:
            return self.trust.assess(outputs[0], features)
        samples = np.concatenate(
            [m.trust.calibrate(o) for m, o in zip(self.members, outputs, strict=True)]
        )
        raw = np.concatenate([softmax(o) for o in outputs]).mean(0)
        return self.trust.assess_samples(samples, raw, features)

    def _add_trust(self, rows: list[dict[str, Any]], a: Assessment) -> None:
        names = [label_key(c) for c in self.info.classes]
        shown = list(self.members[0].class_names.values())
        threshold = self.members[0].threshold if self.info.kind.operating_point else None
        for n, row in enumerate(rows):
            row["predicted_class"] = names[a.predicted[n]]
            row["predicted_name"] = shown[a.predicted[n]]
            row["confidence"] = float(a.probs[n, a.predicted[n]])
            row.update({f"prob_{c}": float(a.probs[n, k]) for k, c in enumerate(names)})
            row.update({f"prob_raw_{c}": float(a.raw_probs[n, k]) for k, c in enumerate(names)})
            row["conformal_set"] = "|".join(c for k, c in enumerate(names) if a.sets[n, k])
            row["set_size"] = int(a.sets[n].sum())
            row.update({name: float(values[n]) for name, values in a.scores.items()})
            row["ood_score"] = float(a.ood_score[n])
            row["ood"] = bool(a.ood[n])
            row["refer"] = bool(a.refer[n])
            row["refer_reason"] = a.reasons[n]
            if threshold is not None:
                row["threshold"] = float(threshold)
                row["positive_at_threshold"] = bool(a.probs[n, 1] >= threshold)

    def _explain(self, rows, images: torch.Tensor, items: list[Item], shown: np.ndarray) -> None:
        """Grad-CAM of the class shown (first bundle), written beside the rows."""
        cams = grad_cam(self.members[0].model, images.to(self.device), shown)
        folder = self.out / "explain"
        for row, item, cam in zip(rows, items, cams, strict=True):
            on_scan = map_to_scan(cam, item.image, self.transform)
            stem = safe_stem(row["scan_id"], item.input_hash)
            paths = write_explanation(item.volume, on_scan, folder, stem)
            row["heatmap"] = str(Path(paths["png"]).relative_to(self.out))
            row["heatmap_map"] = str(Path(paths.get("nifti") or paths["npy"]).relative_to(self.out))


def network_precision(runtime: str, device: torch.device, trained: str) -> str:
    """The precision the network runs in: a compiled runtime's own (fp32, or int8 weights
    and activations for ``*-int8``), torch's autocast choice (:func:`predict_precision`)."""
    if runtime == "torch":
        return predict_precision(device, trained)
    return "int8" if runtime.endswith("-int8") else "fp32"


def predict_precision(device: torch.device, trained: str) -> str:
    """Autocast for prediction: on a GPU its mixed precision (bf16 where supported); on a
    CPU bf16 only for a bundle trained in bf16 on a CPU with native bf16, else fp32."""
    if device.type == "cuda":
        return resolve_precision("auto", device)
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if trained == "bf16" and native_bf16 else "fp32"


def check_members(members: list[Bundle]) -> None:
    """Refuse a classifier without calibration, or an ensemble whose bundles differ in
    task, classes or preprocessing."""
    first = members[0]
    if first.info.kind.classifies and first.trust is None:
        raise BundleError(
            f"{first.path} has no calibration; run `medres calibrate {first.path} COHORT` first"
        )
    for other in members[1:]:
        same = (
            other.info.kind == first.info.kind
            and other.info.classes == first.info.classes
            and other.spec == first.spec
        )
        if not same:
            raise ConfigError(
                f"--ensemble bundle {other.path} differs from {first.path} in task, classes "
                "or preprocessing; an ensemble needs bundles trained for the same task"
            )
        if other.info.kind.classifies and other.trust is None:
            raise BundleError(f"{other.path} has no calibration; run `medres calibrate` on it")


def _scan_fields(scan: ScanSource, item: Item) -> dict[str, Any]:
    meta = scan.meta
    return {
        "scan_id": scan.scan_id,
        "path": path_text(scan.path),
        "patient_id": meta.get("patient_id"),
        "study_uid": meta.get("study_uid"),
        "series_uid": meta.get("series_uid"),
        "modality": meta.get("modality") or scan.kind.upper(),
        "input_hash": item.input_hash,
    }


def safe_stem(scan_id: str, digest: str) -> str:
    """A file name for a scan's outputs: its id with unsafe characters replaced, plus
    8 hex digits of its content hash (two ids may map to the same safe text)."""
    name = re.sub(r"\.(nii\.gz|nii|dcm|png|jpe?g)$", "", scan_id, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[-80:] + "-" + digest[:8]
