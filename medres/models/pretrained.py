"""Pretrained weights: a local torchvision (ImageNet) or MedicalNet checkpoint into a
model's backbone where names and shapes agree, with a :class:`WeightReport` of what
matched. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from medres.errors import ConfigError

if TYPE_CHECKING:
    from medres.models.registry import Classifier


@dataclass
class WeightReport:
    """What :func:`load_pretrained` did with each tensor name of a checkpoint.

    ``matched`` were loaded; ``missing`` are backbone tensors the file lacks (left as
    initialised); ``unexpected`` are file tensors the backbone has no place for (``fc.*``:
    the head is always new); ``mismatched`` have the right name but another shape;
    ``adapted`` (also in ``matched``) is an RGB first conv summed over its input channels
    for a one-channel model. BN ``num_batches_tracked`` counters are ignored throughout.
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        """One line, e.g. 'loaded 120/122 backbone tensors from x.pth; 2 missing, ...'."""
        total = len(self.matched) + len(self.missing) + len(self.mismatched)
        adapted = f" ({', '.join(self.adapted)} summed over RGB)" if self.adapted else ""
        return (
            f"loaded {len(self.matched)}/{total} backbone tensors from {self.source}{adapted}; "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} mismatched"
        )


def load_pretrained(model: Classifier, path: str | Path) -> WeightReport:
    """Load a local ResNet checkpoint into ``model.backbone`` where names and shapes agree.

    Reads ``.safetensors`` or a ``torch.load``-able state dict (``weights_only``), takes
    its ``state_dict`` entry if it has one (MedicalNet), strips leading ``module.`` and
    ``backbone.`` from names. Raises :class:`ConfigError` if the file is missing or
    unreadable, or if no conv weight matched (BN vectors alone fit 2D and 3D models).
    """
    path = Path(path)
    state = _read_state_dict(path)
    target = {k: v for k, v in model.backbone.state_dict().items() if _counts(k)}
    report, load = WeightReport(source=str(path)), {}
    for key, value in state.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            load[key] = value
            report.matched.append(key)
        elif _is_rgb_to_grey(key, value, target[key]):
            load[key] = value.sum(dim=1, keepdim=True)
            report.matched.append(key)
            report.adapted.append(key)
        else:
            report.mismatched.append(key)
    report.missing = [k for k in target if k not in state]
    if not any(load[k].ndim > 1 for k in report.matched):  # BN vectors alone fit 2D and 3D
        raise ConfigError(
            f"{path}: no weight names matched; expected a torchvision-style ResNet state "
            f"dict or a MedicalNet checkpoint (first names found: {list(state)[:3]}; "
            f"{len(report.mismatched)} names had another shape, e.g. 2D weights for a 3D model)"
        )
    model.backbone.load_state_dict(load, strict=False)
    return report


def _counts(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def _is_rgb_to_grey(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """An RGB first conv (O, 3, k...) meeting a one-channel model's (O, 1, k...)."""
    return key == "conv1.weight" and value.shape[1:2] == (3,) and value[:, :1].shape == target.shape


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors by normalised name (no ``module.``/``backbone.`` prefix)."""
    if not path.is_file():
        raise ConfigError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            obj = load_file(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, safetensors and torch errors all mean "unreadable"
        raise ConfigError(
            f"cannot read pretrained weights {path}: {e}. Expected a PyTorch state dict "
            f"(.pt/.pth) or a .safetensors file"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    state = {}
    for key, value in obj.items():
        key = str(key)
        while key.startswith(("module.", "backbone.")):
            key = key.split(".", 1)[1]
        if isinstance(value, torch.Tensor) and _counts(key):
            state[key] = value
    return state
