"""Runtimes: what runs a bundle's network in ``medres predict --runtime
torch|onnx|onnx-int8|openvino|openvino-int8``.

``torch`` is the bundle's own model (eager PyTorch). ``onnx`` runs the network's backbone
(every convolution: all but a linear layer of the work) in an ONNX Runtime
``InferenceSession`` on the CPU, from the ``model.onnx`` that ``medres export BUNDLE
--runtime onnx`` wrote and verified; ``openvino`` runs it in OpenVINO on the CPU, from
the ``model.openvino.xml`` (and ``.bin``) that ``medres export BUNDLE --runtime openvino``
wrote and verified. The linear head stays the bundle's torch layer, so MC dropout (masks
on the features) and test-time views work the same on every runtime. Everything around
the network (reading, preprocessing, calibration, conformal sets, OOD, referral,
Grad-CAM) is the same code whatever the runtime. ``onnx-int8`` and ``openvino-int8`` run
the backbone quantised to int8 (written by ``medres export BUNDLE --runtime onnx|openvino
--int8`` once it passed its validation gate) with the trust layer refit on its own
validation outputs (:meth:`medres.bundle.Bundle.on_runtime`).

Both engines are reached through one interface, ONNX Runtime's ``session.run(output_names,
{input_name: array})``: an ``InferenceSession``, or an :class:`OpenVinoSession` over an
OpenVINO compiled model. onnxruntime and openvino are optional extras (``pip install
"medres[onnx]"``, ``"medres[openvino]"``), imported only here and only when a session is
opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medres.bundle import Bundle
from medres.errors import ConfigError

RUNTIMES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
INPUT, LOGITS, FEATURES = "image", "logits", "features"  # the exported graph's names


def engine_of(runtime: str) -> str:
    """The runtime family of ``runtime``: ``onnx`` or ``openvino`` (``openvino-int8``:
    ``openvino``)."""
    return runtime.partition("-")[0]


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


def import_openvino() -> Any:
    """The ``openvino`` module, or a ConfigError saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ConfigError(
            f"the OpenVINO runtime needs the openvino package ({e}); install it with "
            '`pip install "medres[openvino]"`'
        ) from e
    return openvino


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


class OpenVinoSession:
    """An OpenVINO model compiled for the CPU behind ONNX Runtime's ``run`` interface.

    ``run(names, {"image": (N, C, *spatial) float32})`` → the named outputs as float32
    arrays, in order (any N: the exported batch axis is dynamic). One infer request,
    reused: :class:`RuntimeClassifier` calls it synchronously, one batch at a time.
    """

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)
        return [np.array(results[self.compiled.output(name)]) for name in names]


def openvino_session(path: str | Path, threads: int | None = None) -> OpenVinoSession:
    """The OpenVINO IR at ``path`` (``.xml``, its ``.bin`` beside it) compiled for the CPU
    with ``threads`` inference threads (default: torch's, ``torch.get_num_threads()``)."""
    ov = import_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {
        props.inference_num_threads: threads or torch.get_num_threads(),
        # batches arrive one at a time, synchronously: one stream using every thread on
        # the batch (THROUGHPUT splits them into streams only parallel requests fill;
        # 2 cores, 32 28² scans: 77 ms fp32 / 20 ms int8, against 82 / 28 ms)
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        # fp32 arithmetic: on a CPU with bf16 (AMX, AVX512-BF16) OpenVINO would otherwise
        # run bf16, far outside the 1e-4 the export was verified to (int8 layers stay int8)
        hints.inference_precision: ov.Type.f32,
    }
    return OpenVinoSession(ov.Core().compile_model(str(path), "CPU", config))


def open_session(runtime: str, path: str | Path, threads: int | None = None) -> Any:
    """A session (ONNX Runtime's ``run`` interface) over ``runtime``'s model at ``path``:
    :func:`onnx_session` for ``onnx``/``onnx-int8``, :func:`openvino_session` for
    ``openvino``/``openvino-int8``."""
    engine = engine_of(runtime)
    if engine == "openvino":
        return openvino_session(path, threads)
    if engine == "onnx":
        return onnx_session(path, threads)
    raise ConfigError(f"no compiled runtime {runtime!r}; one of {', '.join(RUNTIMES[1:])}")


class RuntimeClassifier(nn.Module):
    """A :class:`~medres.models.Classifier` whose ``features`` run in a compiled runtime.

    ``features``: (N, C, *spatial) float32 → (N, F) float32, through ``session``'s
    ``features`` output (:func:`open_session`; on the CPU; the batch is copied to a
    contiguous array). The ``dropout`` and linear ``head`` are the torch model's own
    modules (shared, not copied), so :func:`medres.uncertainty.sampling.forward_samples`
    runs unchanged.
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
    """The network of ``bundle`` on ``runtime``: its torch model, or a
    :class:`RuntimeClassifier` over its verified export (``onnx``: ``model.onnx``,
    ``openvino``: ``model.openvino.xml``; ``*-int8``: the int8 model, predict with the
    bundle's :meth:`~medres.bundle.Bundle.on_runtime` for that model's own trust layer).

    Raises:
        ConfigError: an unknown runtime, or its package (onnxruntime, openvino) not
            installed.
        BundleError: a runtime asked of a bundle without its export (run ``medres export
            BUNDLE --runtime onnx|openvino`` first) or exported from other weights.
    """
    check_runtime(runtime)
    if runtime == "torch":
        return bundle.model
    path, _ = bundle.runtime(runtime)
    return RuntimeClassifier(open_session(runtime, path, threads), bundle.model).eval()


def check_runtime(runtime: str, device: str = "auto") -> None:
    """Refuse an unknown runtime, or a device the runtime does not run on (ONNX Runtime
    and OpenVINO here run on the CPU: ``--device`` ``auto`` or ``cpu``)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime != "torch" and device not in ("auto", "cpu"):
        where = "CPUExecutionProvider" if engine_of(runtime) == "onnx" else "OpenVINO's CPU plugin"
        raise ConfigError(
            f"--runtime {runtime} runs on the CPU ({where}); drop --device "
            f"{device} or use --runtime torch on that device"
        )
