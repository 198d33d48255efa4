"""``medres export BUNDLE --runtime onnx|openvino``: a bundle's network for ONNX Runtime
or OpenVINO, accepted only when it gives torch's calibrated probabilities.

:func:`export_bundle` exports the bundle's model with ``torch.onnx.export`` (the
``torch.export``-based exporter, opset :data:`OPSET`, a dynamic batch axis; input
``image`` (N, C, *spatial) float32, outputs ``logits`` (N, K) and ``features`` (N, F));
for OpenVINO that graph is converted to OpenVINO IR (:func:`write_openvino`: the same
input and outputs, fp32 weights). It then runs the bundle's validation scans through
torch and the runtime, along the path ``medres predict`` takes
(:func:`medres.inference.forward`). The export is accepted when the
calibrated probabilities (regression: the predictions, in the target's units) differ by
at most :data:`TOLERANCE` (maximum absolute difference over every scan and class), both
through ``--runtime onnx``'s path (the runtime's features, the torch head) and through
the graph's own ``logits``; only then are the model (``model.onnx``; OpenVINO:
``model.openvino.xml`` and ``.bin``), the model card's section and the
``runtimes.<runtime>`` record of ``bundle.json`` written
(:func:`medres.bundle.add_runtime`).
Otherwise :class:`ExportRefused` names the figure, and the bundle is untouched.

The validation scans are the ``val`` split of the cohort that fitted the bundle's trust
layer (:func:`medres.bundle.calibration_cohort`: ``medres calibrate``'s cohort, else the
training cohort while it keeps its fingerprint), or of ``--cohort``.

``--int8`` lives in :mod:`medres.predict.quantize`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medres.bundle import RUNTIME_FILES, Bundle, add_runtime, calibration_cohort, load_bundle
from medres.cohort import Cohort, read_row
from medres.errors import BundleError, ConfigError
from medres.inference import LocalEngine, ScanInputs, auto_workers, forward
from medres.model_card import with_runtime
from medres.predict.runtime import (
    FEATURES,
    INPUT,
    LOGITS,
    RuntimeClassifier,
    engine_of,
    import_onnxruntime,
    import_openvino,
    open_session,
)
from medres.transforms import build_transform

TOLERANCE = 1e-4  # the largest difference in calibrated probability accepted
OPSET = 18  # ONNX opset of the export (ONNX Runtime 1.20+ runs it)
EXPORTED = ("onnx", "openvino")  # what `medres export --runtime` writes (fp32; --int8 too)


class ExportRefused(BundleError):
    """The exported model does not give the bundle's probabilities within the tolerance."""


@dataclass
class Verification:
    """What an export was checked against: the ``cohort`` (path, ``fingerprint``) whose
    ``val`` split gave ``scans`` readable scans, and the largest absolute differences
    from torch of the compared ``quantity`` (``max_abs_diff``) and of the penultimate
    features the OOD score reads (``features_max_abs_diff``)."""

    cohort: Path
    fingerprint: str
    scans: int
    quantity: str
    max_abs_diff: float
    features_max_abs_diff: float

    def record(self, tolerance: float) -> dict[str, Any]:
        """The ``verified`` entry of ``bundle.json``'s ``runtimes.<name>``."""
        return {
            "against": "torch",
            "quantity": self.quantity,
            "cohort": str(self.cohort.resolve()),
            "fingerprint": self.fingerprint,
            "split": "val",
            "scans": self.scans,
            "max_abs_diff": self.max_abs_diff,
            "features_max_abs_diff": self.features_max_abs_diff,
            "tolerance": tolerance,
        }


def export_bundle(
    bundle_path: str | Path,
    runtime: str = "onnx",
    *,
    cohort: str | Path | None = None,
    tolerance: float = TOLERANCE,
    batch_size: int = 32,
    workers: int | None = None,
) -> dict[str, Any]:
    """Export the bundle's network for ``runtime`` into the bundle, once verified;
    returns its ``runtimes.<runtime>`` record (also written to ``bundle.json``).

    Args:
        cohort: a cohort manifest whose ``val`` split verifies the export (default: the
            cohort that fitted the bundle's trust layer).
        tolerance: the largest accepted absolute difference in calibrated probability.
        batch_size, workers: scans per forward pass, and decoding processes (None:
            :func:`medres.inference.auto_workers`).

    Raises:
        ExportRefused: the runtime's probabilities differ by more than ``tolerance``
            (the figure named; nothing written).
        ConfigError: a runtime medres cannot export for, its packages missing
            (onnxruntime, openvino), no validation scans.
        BundleError: the bundle fails its checks.
    """
    if runtime not in EXPORTED:
        raise ConfigError(
            f"medres export --runtime {runtime!r}: this medres exports for "
            f"{' and '.join(EXPORTED)} (int8: --runtime {EXPORTED[0]} --int8; torch is the "
            "bundle's own model: nothing to export)"
        )
    _check_installed(runtime)  # before any work: say how to install what is missing
    bundle = load_bundle(bundle_path)
    cohort_path, rows = validation_rows(bundle, cohort)
    with tempfile.TemporaryDirectory(prefix="medres-export-") as tmp:
        path = write_onnx(bundle.model, bundle, Path(tmp) / "model.onnx")
        if runtime == "openvino":
            path = write_openvino(path, Path(tmp) / RUNTIME_FILES[runtime])
        session = open_session(runtime, path)
        check = verify(bundle, session, rows, batch_size=batch_size, workers=workers)
        if not check.max_abs_diff <= tolerance:  # NaN is refused too
            raise ExportRefused(
                f"the {runtime} export of {bundle.path} is refused: its {check.quantity} "
                f"differ from torch's by up to {check.max_abs_diff:.3g} on {check.scans} "
                f"validation scans of {cohort_path} (tolerance {tolerance:g}); nothing was "
                "written to the bundle. Report it with the bundle's model name and the "
                f"versions of {', '.join(_versions(runtime))}"
            )
        record = {
            "file": RUNTIME_FILES[runtime],
            "precision": "fp32",
            "exported": datetime.now(UTC).isoformat(timespec="seconds"),
            "opset": OPSET,
            **({"converted": CONVERTED} if runtime == "openvino" else {}),
            "verified": check.record(tolerance),
            "versions": _versions(runtime),
        }
        card = (bundle.path / "model_card.md").read_text()
        add_runtime(bundle.path, runtime, path, record, with_runtime(card, runtime, record))
    return load_bundle(bundle.path).manifest.runtimes[runtime].model_dump()


def validation_rows(bundle: Bundle, cohort: str | Path | None) -> tuple[Path, Any]:
    """The cohort that verifies an export and its readable ``val`` rows (a DataFrame
    whose ``attrs`` hold the cohort's ``path`` and ``fingerprint``).

    Raises:
        ConfigError: the bundle's cohort is gone or changed and none was given, or the
            cohort has no readable ``val`` scans.
    """
    path = Path(cohort) if cohort is not None else calibration_cohort(bundle)
    if path is None:
        raise ConfigError(
            f"the validation scans of {bundle.path} cannot be found: the cohort that fitted "
            f"its calibration ({bundle.trained_on.path}) is gone or has changed since; give "
            "one with --cohort COHORT.parquet (its val split is used)"
        )
    loaded = Cohort.load(path)
    table = loaded.ok
    rows = table[table["split"] == "val"].copy()
    rows.attrs.update(path=path, fingerprint=loaded.fingerprint())
    if rows.empty:
        raise ConfigError(
            f"{path} has no readable scans in its val split to verify the export against; "
            "give a cohort with a val split (`medres split`)"
        )
    return path, rows


class _Exported(nn.Module):
    """The graph exported: ``image`` (N, C, *spatial) → ``logits`` (N, K), ``features``
    (N, F); dropout off (eval mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(image)
        return self.model.head(features), features


def write_onnx(model: nn.Module, bundle: Bundle, path: Path) -> Path:
    """Export ``model`` (a :class:`~medres.models.Classifier`, eval mode) to ``path`` for
    the bundle's input grid, the batch axis dynamic; one file (no external data)."""
    spec = bundle.spec
    example = torch.zeros(2, spec.in_channels, *spec.spatial_size)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping ..."
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes and the like
            torch.onnx.export(
                _Exported(model.eval()),
                (example,),
                str(path),
                input_names=[INPUT],
                output_names=[LOGITS, FEATURES],
                dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    return path


# how an OpenVINO IR was made (its record's `converted`; int8: from the QDQ graph)
CONVERTED = "openvino.convert_model of the ONNX graph, saved with compress_to_fp16=False"


def write_openvino(onnx_path: Path, path: Path) -> Path:
    """Convert the ONNX model at ``onnx_path`` (:func:`write_onnx`'s graph, fp32 or QDQ
    int8) to OpenVINO IR at ``path`` (``.xml``; its weights in the ``.bin`` beside it):
    the same input and output names, the batch axis dynamic, weights kept in fp32 (not
    compressed to fp16, which would cost the 1e-4). OpenVINO runs a QDQ graph's
    quantised layers in int8."""
    ov = import_openvino()
    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path


def verify(
    bundle: Bundle,
    session: Any,
    rows,
    *,
    batch_size: int = 32,
    workers: int | None = None,
) -> Verification:
    """Run ``rows`` (manifest rows of :func:`validation_rows`) through torch and the
    exported model's ``session`` (:func:`~medres.predict.runtime.open_session`): the
    largest differences of the calibrated probabilities (through ``--runtime``'s path,
    the runtime's features and the torch head, and through the graph's own ``logits``)
    and of the features."""
    on_runtime = RuntimeClassifier(session, bundle.model).eval()
    records = rows[["scan_id", "path", "files"]].to_dict("records")
    inputs = ScanInputs(records, read=read_row, prepare=build_transform(bundle.spec))
    engine = LocalEngine(auto_workers("cpu") if workers is None else workers)
    worst, worst_features, scans = 0.0, 0.0, 0
    for batch in engine.batches(inputs, batch_size):
        good = [item.image.as_subclass(torch.Tensor) for item in batch if item.failure is None]
        if not good:
            continue
        images = torch.stack(good)
        torch_logits, torch_features = forward(bundle.model, images)
        runtime_logits, runtime_features = forward(on_runtime, images)
        (graph_logits,) = session.run([LOGITS], {INPUT: images.contiguous().numpy()})
        expected = _compared(bundle, torch_logits[0].numpy())
        for logits in (runtime_logits[0].numpy(), graph_logits):
            worst = max(worst, float(np.abs(_compared(bundle, logits) - expected).max()))
        gap = float((runtime_features - torch_features).abs().max())
        worst_features = max(worst_features, gap)
        scans += len(good)
    if not scans:
        raise ConfigError("none of the validation scans could be read; nothing to verify with")
    quantity = (
        "calibrated probabilities"
        if bundle.trust is not None
        else "probabilities"
        if bundle.info.kind.classifies
        else "predictions"
    )
    cohort = Path(rows.attrs["path"])
    return Verification(cohort, rows.attrs["fingerprint"], scans, quantity, worst, worst_features)


def _compared(bundle: Bundle, logits: np.ndarray) -> np.ndarray:
    """What the export must reproduce from (N, K) logits: calibrated probabilities (an
    uncalibrated classifier: softmax probabilities; regression: predictions in the
    target's units)."""
    logits = np.asarray(logits, dtype=np.float64)
    if bundle.trust is not None:
        return bundle.trust.calibrate(logits)
    return bundle.info.outputs_to_scores(logits)


def _check_installed(runtime: str = "onnx") -> None:
    """Refuse (ConfigError, naming the fix) when the exporter's packages are missing:
    onnxruntime, onnx and onnxscript (``torch.onnx.export``'s exporter needs both; every
    export starts from the ONNX graph), and openvino for ``openvino``."""
    if engine_of(runtime) == "openvino":
        import_openvino()
    import_onnxruntime()
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"exporting needs the onnx and onnxscript packages ({e}); install them with "
            '`pip install "medres[onnx]"`'
        ) from e


def _versions(runtime: str = "onnx") -> dict[str, str]:
    """The versions that exported and verified ``runtime``'s model (package: version)."""
    import onnx

    ort = import_onnxruntime()
    versions = {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    if engine_of(runtime) == "openvino":
        versions["openvino"] = import_openvino().__version__
    return versions
