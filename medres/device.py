"""Where the network runs: ``--device auto|cpu|cuda|cuda:N`` and the precision that goes
with it.

``auto`` takes the first CUDA GPU when this process sees one, else the CPU. A device
that is asked for and absent is refused at once (:func:`resolve_device`), before any
scan is read. Precision (:func:`resolve_precision`): on the CPU bf16 only where it is
native (else it is 10–20× slower than fp32); on a GPU bf16 where the GPU supports it,
else fp16 with a gradient scaler (:func:`needs_grad_scaler`). Bundles stay
device-neutral: weights are saved as CPU tensors and loaded on the CPU, then moved.

torch is imported inside the functions: ``medres --help`` must not import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medres.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(requested: str = "auto") -> torch.device:
    """The :class:`torch.device` for ``--device``.

    Raises:
        ConfigError: an unknown name, or a CUDA device this process cannot see, naming
            what was found and what to use instead.
    """
    import torch

    text = (requested or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise ConfigError(f"--device {requested!r} is not a device; use {DEVICES}")
    if not torch.cuda.is_available():
        build = (
            f"torch {torch.__version__} is a CPU-only build"
            if torch.version.cuda is None
            else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU"
        )
        raise ConfigError(
            f"--device {requested}: this machine has no CUDA GPU visible to medres ({build}); "
            "use --device cpu, or --device auto to take a GPU only where there is one"
        )
    index = int(text[5:]) if ":" in text else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(
            f"--device {requested}: this machine has {count} CUDA GPU(s), cuda:0 to "
            f"cuda:{count - 1}; pick one of them"
        )
    return torch.device(f"cuda:{index}")


def resolve_precision(requested: str, device: torch.device, spatial_dims: int = 2) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``requested`` (``auto`` or one of them) on
    ``device``: ``auto`` is bf16 where native (CPU, 2D models) or supported (GPU), else
    fp32 on a CPU and fp16 on a GPU.

    A 3D model on a CPU trains in fp32 under ``auto``: under bf16 autocast (torch 2.13,
    oneDNN, an AMD EPYC with native bf16) a 3D ResNet-18's gradients reached 1e35 in some
    steps and were NaN in others, where fp32 gave none above 1e3 on the same scans; the
    2D model showed neither.

    Raises:
        ConfigError: fp16 on a CPU (autocast there is bf16 only).
    """
    import torch

    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if requested != "auto":
            return requested
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "fp16":
        raise ConfigError("precision fp16 needs a GPU (--device cuda); on a CPU use bf16 or fp32")
    if requested == "auto":
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return "bf16" if native and spatial_dims == 2 else "fp32"
    return requested


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (off for fp32)."""
    import torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32")


def needs_grad_scaler(precision: str) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return precision == "fp16"


def prepare_device(device: torch.device) -> None:
    """Settings for fast training on ``device``: cuDNN autotuning on a GPU (the inputs of
    a run all have one shape)."""
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.set_device(device)
