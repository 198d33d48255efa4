"""Runtimes: what runs a bundle's network in ``medres predict --runtime
torch|onnx|onnx-int8``.

``torch`` is the bundle's own model (eager PyTorch). ``onnx`` runs the network's backbone
(every convolution: all but a linear layer of the work) in an ONNX Runtime
``InferenceSession`` on the CPU, from the ``model.onnx`` that ``medres export BUNDLE
--runtime onnx`` wrote and verified; the linear head stays the bundle's torch layer, so
MC dropout (masks on the features) and test-time views work the same on every runtime.
Everything around the network (reading, preprocessing, calibration, conformal sets, OOD,
referral, Grad-CAM) is the same code whatever the runtime. ``onnx-int8`` runs the
backbone quantised to int8 (``model.int8.onnx``, written by ``medres export BUNDLE
--runtime onnx --int8`` once it passed its validation gate) with the trust layer refit
on its own validation outputs (:meth:`medres.bundle.Bundle.on_runtime`).

onnxruntime is an optional extra (``pip install "medres[onnx]"``), imported only here and
only when a session is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medres.bundle import Bundle
from medres.errors import ConfigError

RUNTIMES = ("torch", "onnx", "onnx-int8")
INPUT, LOGITS, FEATURES = "image", "logits", "features"  # the exported graph's names


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a ConfigError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ConfigError(
            f"the ONNX runtime needs the onnxruntime package ({e}); install it with "
            '`pip install "medres[onnx]"`'
        ) from e
    return onnxruntime


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime ``InferenceSession`` of ``path`` on the CPU
    (``CPUExecutionProvider``), ``threads`` intra-op threads (default: torch's,
    ``torch.get_num_threads()``, so both runtimes use the same cores), which do not spin
    while idle."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # idle threads sleep instead of spinning, leaving the cores to the decoding workers:
    # 2 cores, 300 28² PNGs, one process: 163 scans/s against 128 spinning (predict_folder)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxClassifier(nn.Module):
    """A :class:`~medres.models.Classifier` whose ``features`` run in ONNX Runtime.

    ``features``: (N, C, *spatial) float32 → (N, F) float32, through ``session``'s
    ``features`` output (on the CPU; the batch is copied to a contiguous array). The
    ``dropout`` and linear ``head`` are the torch model's own modules (shared, not
    copied), so :func:`medres.uncertainty.sampling.forward_samples` runs unchanged.
    """

    def __init__(self, session: Any, model: nn.Module) -> None:
        super().__init__()
        self.session = session
        self.dropout, self.head = model.dropout, model.head
        self.num_features, self.num_classes = model.num_features, model.num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features: (N, C, *spatial) -> (N, num_features)."""
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (features,) = self.session.run([FEATURES], {INPUT: array})
        return torch.from_numpy(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (N, C, *spatial) -> (N, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def runtime_model(bundle: Bundle, runtime: str, threads: int | None = None) -> nn.Module:
    """The network of ``bundle`` on ``runtime``: its torch model, or an
    :class:`OnnxClassifier` over its verified ``model.onnx`` (``onnx-int8``:
    ``model.int8.onnx``; predict with the bundle's :meth:`~medres.bundle.Bundle.on_runtime`
    for that model's own trust layer).

    Raises:
        ConfigError: an unknown runtime, or onnxruntime not installed.
        BundleError: ``onnx`` asked of a bundle without an export (run
            ``medres export BUNDLE --runtime onnx`` first) or exported from other weights.
    """
    check_runtime(runtime)
    if runtime == "torch":
        return bundle.model
    path, _ = bundle.runtime(runtime)
    return OnnxClassifier(onnx_session(path, threads), bundle.model).eval()


def check_runtime(runtime: str, device: str = "auto") -> None:
    """Refuse an unknown runtime, or a device the runtime does not run on (ONNX Runtime
    here runs on the CPU: ``--device`` ``auto`` or ``cpu``)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime != "torch" and device not in ("auto", "cpu"):
        raise ConfigError(
            f"--runtime {runtime} runs on the CPU (CPUExecutionProvider); drop --device "
            f"{device} or use --runtime torch on that device"
        )
