"""``medres export BUNDLE --runtime onnx|openvino --int8``: an int8 model for ONNX Runtime
or OpenVINO, accepted only when it keeps the fp32 model's figures on the validation scans.

:func:`export_int8` quantises the fp32 graph of :mod:`medres.predict.export` with ONNX
Runtime's static quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax
ranges) calibrated on at most :data:`CALIBRATION_SCANS` training scans of the cohort the
fp32 export verifies on, preprocessed as ``medres predict`` does. For OpenVINO that QDQ
graph is converted to OpenVINO IR (:func:`medres.predict.export.write_openvino`), whose CPU
plugin runs the quantised layers in int8: one quantiser, one gate for both runtimes. On
the validation scans both the torch model (fp32) and the int8 model (along ``--runtime
onnx-int8``'s or ``openvino-int8``'s path) get a trust layer fitted with the bundle's
trust settings (:func:`medres.uncertainty.trust.fit_trust`: temperature, conformal
quantile, referral threshold; the int8 model keeps the bundle's OOD model, its threshold
set on the int8 features, and the bundle's binary operating point: refitting Youden's J
moved the demo's from 0.34 to 0.75 along a plateau, changing the call at it on 10 % of
300 scans, against none when kept). :func:`int8_gate` then accepts the int8 model only
when AUROC drops by at most 0.005, ECE rises by at most 0.01, conformal coverage is at
least its target minus 0.02 and at least 99 % of predicted classes are torch's
(:class:`Int8Limits`); otherwise :class:`ExportRefused` lists the four figures and
nothing is written. Accepted:
``model.int8.onnx`` (OpenVINO: ``model.int8.openvino.xml`` and ``.bin``), its trust
layer in ``onnx-int8/`` (``openvino-int8/``) and the ``runtimes.<runtime>-int8`` record
(with the figures) and model card section.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medres.bundle import RUNTIME_FILES, Bundle, add_runtime, load_bundle
from medres.calibrate import expected_calibration_error
from medres.cohort import Cohort, read_row
from medres.errors import ConfigError
from medres.evaluate.evaluation import evaluate
from medres.inference import LocalEngine, ScanInputs, Scored, auto_workers, score_rows
from medres.model_card import with_runtime
from medres.predict.export import (
    CONVERTED,
    EXPORTED,
    OPSET,
    ExportRefused,
    _check_installed,
    _versions,
    validation_rows,
    write_onnx,
    write_openvino,
)
from medres.predict.runtime import INPUT, RuntimeClassifier, open_session
from medres.transforms import build_transform
from medres.uncertainty.trust import Trust, fit_trust

CALIBRATION_SCANS = 200  # training scans that set the int8 activation ranges


@dataclass(frozen=True)
class Int8Limits:
    """What an int8 model must keep on the validation scans, against torch in fp32:
    AUROC may drop by at most ``auroc_drop`` and ECE rise by at most ``ece_rise``;
    conformal coverage must be at least its target minus ``coverage_gap`` (the shown
    class is always in the set, so an accurate model covers more than its target:
    only falling short of it is refused); at least ``agreement`` of the scans keep
    torch's predicted class."""

    auroc_drop: float = 0.005
    ece_rise: float = 0.01
    coverage_gap: float = 0.02
    agreement: float = 0.99


@dataclass
class Int8Figures:
    """The int8 gate's figures on ``scans`` validation scans: AUROC and ECE of torch
    (fp32) and of the int8 model, each with its trust layer fitted on those scans, the
    int8 model's conformal coverage and its target, and the share of scans whose
    predicted class is torch's (``agreement``); for binary tasks, the share whose call at
    the bundle's operating point is torch's (``calls_unchanged``; recorded, not gated)."""

    scans: int
    auroc_fp32: float
    auroc_int8: float
    ece_fp32: float
    ece_int8: float
    coverage_target: float
    coverage_int8: float
    agreement: float
    calls_unchanged: float | None = None


def int8_gate(figures: Int8Figures, limits: Int8Limits = Int8Limits()) -> list[tuple[str, bool]]:
    """The four checks of an int8 model, each ``(line, passed)``: the line names the
    figures, the change and the limit (met exactly passes: differences are compared with
    a 1e-12 allowance for float rounding). A NaN figure fails its check."""
    f, lim, eps = figures, limits, 1e-12
    drop, rise = f.auroc_fp32 - f.auroc_int8, f.ece_int8 - f.ece_fp32
    floor = f.coverage_target - lim.coverage_gap
    checks = [
        (
            f"AUROC {f.auroc_fp32:.4f} (fp32) -> {f.auroc_int8:.4f} (int8): drop {drop:.4f}, "
            f"at most {lim.auroc_drop:g}",
            drop <= lim.auroc_drop + eps,
        ),
        (
            f"ECE {f.ece_fp32:.4f} (fp32) -> {f.ece_int8:.4f} (int8): rise {rise:.4f}, "
            f"at most {lim.ece_rise:g}",
            rise <= lim.ece_rise + eps,
        ),
        (
            f"conformal coverage {f.coverage_int8:.4f} (int8), target {f.coverage_target:g}: "
            f"at least {floor:.4g}",
            f.coverage_int8 >= floor - eps,
        ),
        (
            f"predicted class unchanged from torch on {f.agreement:.2%} of scans, at least "
            f"{lim.agreement:.0%}",
            f.agreement >= lim.agreement - eps,
        ),
    ]
    return [
        (line, bool(passed) and not math.isnan(value))
        for (line, passed), value in zip(
            checks, (drop, rise, f.coverage_int8, f.agreement), strict=True
        )
    ]


def export_int8(
    bundle_path: str | Path,
    runtime: str = "onnx",
    *,
    cohort: str | Path | None = None,
    calibration_scans: int = CALIBRATION_SCANS,
    limits: Int8Limits = Int8Limits(),
    batch_size: int = 32,
    workers: int | None = None,
) -> dict[str, Any]:
    """``medres export BUNDLE --runtime onnx|openvino --int8``: quantise the bundle's
    network, refit its trust layer on the validation scans and write both into the bundle
    when :func:`int8_gate` accepts them; returns the ``runtimes.<runtime>-int8`` record.

    Args:
        cohort: a cohort manifest whose ``train`` split calibrates the quantisation and
            ``val`` split refits and gates it (default: the cohort that fitted the
            bundle's trust layer).
        calibration_scans: at most this many training scans (a seeded sample) set the
            activation ranges.
        limits: the gate (:class:`Int8Limits`).

    Raises:
        ExportRefused: a check of the gate failed (all four figures named; nothing
            written).
        ConfigError: not ``onnx`` or ``openvino``, a bundle without a trust layer
            (regression, or not calibrated), packages missing, no training or validation
            scans.
        BundleError: the bundle fails its checks.
    """
    if runtime not in EXPORTED:
        raise ConfigError(
            f"--int8 quantises for --runtime {' or '.join(EXPORTED)}; got {runtime!r}"
        )
    if calibration_scans < 1:
        raise ConfigError(f"--calibration-scans must be at least 1; got {calibration_scans}")
    _check_installed(runtime)
    int8_runtime = f"{runtime}-int8"  # also the bundle folder of its trust layer
    bundle = load_bundle(bundle_path)
    if bundle.trust is None:
        raise ConfigError(
            f"--int8 needs a classifier with a trust layer, which it refits for the int8 "
            f"model; {bundle.path} has none (regression, or run `medres calibrate` first)"
        )
    cohort_path, _ = validation_rows(bundle, cohort)
    loaded = Cohort.load(cohort_path)
    val, train = loaded.labelled("val"), loaded.ok[loaded.ok["split"] == "train"]
    if val.empty or train.empty:
        raise ConfigError(
            f"{cohort_path} needs labelled val scans and train scans to quantise and gate "
            f"an int8 model (found {len(train)} train, {len(val)} labelled val)"
        )
    if len(train) > calibration_scans:
        train = train.sample(calibration_scans, random_state=0).sort_index()
    engine = LocalEngine(auto_workers("cpu") if workers is None else workers)
    with tempfile.TemporaryDirectory(prefix="medres-export-") as tmp:
        folder = Path(tmp)
        fp32 = write_onnx(bundle.model, bundle, folder / "model.onnx")
        reader = _CalibrationReader(bundle, train, batch_size, engine)
        int8 = quantize(fp32, folder / "model.int8.onnx", reader)
        if runtime == "openvino":
            int8 = write_openvino(int8, folder / RUNTIME_FILES[int8_runtime])
        session = open_session(int8_runtime, int8)
        int8_model = RuntimeClassifier(session, bundle.model).eval()
        figures, trust = _gate_figures(bundle, int8_model, val, batch_size, engine)
        checks = int8_gate(figures, limits)
        lines = "; ".join(f"{line}: {'ok' if ok else 'FAILED'}" for line, ok in checks)
        if not all(ok for _, ok in checks):
            raise ExportRefused(
                f"the int8 export of {bundle.path} is refused on {figures.scans} validation "
                f"scans of {cohort_path}: {lines}. Nothing was written to the bundle; the "
                f"fp32 export (`--runtime {runtime}`) keeps torch's probabilities"
            )
        names = trust.save(folder / int8_runtime)
        record = {
            "file": RUNTIME_FILES[int8_runtime],
            "precision": "int8",
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
            "opset": OPSET,
            "quantization": {
                "method": "onnxruntime.quantization.quantize_static",
                "format": "QDQ",
                "weights": "int8, per channel",
                "activations": "uint8",
                "calibrate_method": "MinMax",
                "cohort": str(Path(cohort_path).resolve()),
                "split": "train",
                "scans": reader.scans,
                **({"converted": CONVERTED} if runtime == "openvino" else {}),
            },
            "trust": int8_runtime,
            "verified": {
                "against": "torch",
                "quantity": "validation metrics",
                "cohort": str(Path(cohort_path).resolve()),
                "fingerprint": loaded.fingerprint(),
                "split": "val",
                "figures": asdict(figures),
                "limits": asdict(limits),
                "checks": [line for line, _ in checks],
                "accepted": True,
                "scans": figures.scans,
            },
            "versions": _versions(runtime),
        }
        card = (bundle.path / "model_card.md").read_text()
        extra = {f"{int8_runtime}/{name}": folder / int8_runtime / name for name in names}
        section = with_runtime(card, int8_runtime, record)
        add_runtime(bundle.path, int8_runtime, int8, record, section, extra)
    return load_bundle(bundle.path).manifest.runtimes[int8_runtime].model_dump()


def quantize(fp32: Path, out: Path, reader: Any) -> Path:
    """Static int8 quantisation of the ONNX model ``fp32`` into ``out``: ONNX Runtime's
    pre-processing (shape inference, graph optimisation), then ``quantize_static`` (QDQ,
    per-channel int8 weights, uint8 activations with MinMax ranges over ``reader``'s
    batches, an ONNX Runtime ``CalibrationDataReader``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(f"{out.stem}.prepared.onnx")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantiser logs each step at INFO/WARNING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        quiet.setLevel(level)
    prepared.unlink(missing_ok=True)
    return out


class _CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over training rows: each
    ``get_next()`` one preprocessed batch ``{"image": (N, C, *spatial) float32}``, read
    and prepared as ``medres predict`` does (unreadable scans skipped), then None.
    ``scans``: how many it gave."""

    def __init__(self, bundle: Bundle, rows, batch_size: int, engine: LocalEngine) -> None:
        records = rows[["scan_id", "path", "files"]].to_dict("records")
        inputs = ScanInputs(records, read=read_row, prepare=build_transform(bundle.spec))
        self._batches: Iterator[Any] = iter(engine.batches(inputs, batch_size))
        self.scans = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        for batch in self._batches:
            good = [item.image.as_subclass(torch.Tensor) for item in batch if item.failure is None]
            if good:
                self.scans += len(good)
                return {INPUT: torch.stack(good).contiguous().numpy()}
        if not self.scans:
            raise ConfigError("none of the training scans could be read to calibrate int8")
        return None

    def rewind(self) -> None:  # one pass is all MinMax needs
        return None


def _gate_figures(
    bundle: Bundle, int8_model: nn.Module, val, batch_size: int, engine: LocalEngine
) -> tuple[Int8Figures, Trust]:
    """The gate's figures on the labelled validation rows ``val``; the int8 model's trust
    layer (fitted with the bundle's settings; the bundle's OOD model with its threshold
    set on the int8 features)."""
    info, config = bundle.info, bundle.trust.config

    def scored(model: nn.Module) -> Scored:
        return score_rows(model, info, bundle.spec, val, batch_size=batch_size, engine=engine)

    reference, quantised = scored(bundle.model), scored(int8_model)
    if quantised.rows.empty:
        raise ConfigError("none of the validation scans could be read; nothing to gate with")
    if list(reference.rows["scan_id"]) != list(quantised.rows["scan_id"]):
        raise ConfigError("the validation scans read differently in two passes; try again")
    y = quantised.targets
    fitted = {}
    for name, s in (("fp32", reference), ("int8", quantised)):
        fitted[name] = fit_trust(info.task, config, val_logits=s.outputs[0], val_targets=y)
    trust = fitted["int8"]
    if bundle.trust.ood is not None:
        trust.ood = copy.deepcopy(bundle.trust.ood).set_threshold(quantised.features)
    a32 = fitted["fp32"].assess(reference.outputs, None)
    a8 = trust.assess(quantised.outputs, quantised.features)
    calls, cut = None, bundle.threshold
    if info.kind.operating_point and cut is not None:
        calls = float(((a8.probs[:, 1] >= cut) == (a32.probs[:, 1] >= cut)).mean())

    def auroc(probs: np.ndarray) -> float:
        return evaluate(y, probs, task=info.task, n_boot=0).metrics["auroc"].value

    figures = Int8Figures(
        scans=len(y),
        auroc_fp32=auroc(a32.probs),
        auroc_int8=auroc(a8.probs),
        ece_fp32=expected_calibration_error(a32.probs, y),
        ece_int8=expected_calibration_error(a8.probs, y),
        coverage_target=config.coverage,
        coverage_int8=float(a8.sets[np.arange(len(y)), y].mean()),
        agreement=float((a8.predicted == a32.predicted).mean()),
        calls_unchanged=calls,
    )
    return figures, trust
