"""The model registry: :func:`register_model`, :func:`create_model` and :class:`Classifier`.

A builder registered under its name returns ``(backbone, F)``: the backbone maps
(N, C, X, Y[, Z]) to pooled (N, F) features; :func:`create_model` checks the arguments,
puts a dropout and a linear head on it, turns its 3D convs into
:class:`~medres.models.convs.PaddingAwareConv3d` and loads pretrained weights if given.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from medres.errors import ConfigError
from medres.models.convs import skip_padding_taps
from medres.models.pretrained import WeightReport, load_pretrained

Builder = Callable[..., tuple[nn.Module, int]]  # (in_channels, spatial_dims, stem_stride)
_MODELS: dict[str, Builder] = {}
_SPATIAL_DIMS: dict[str, tuple[int, ...]] = {}
STEM_STRIDES = (1, 2, 4, 8)
STEMS = {
    1: (3, 1, False),
    2: (7, 2, False),
    4: (7, 2, True),
    8: (7, 4, True),
}  # kernel, stride, max-pool


def register_model(fn: Builder | None = None, *, spatial_dims: tuple[int, ...] = (2, 3)):
    """File ``fn`` in the registry under ``fn.__name__``; use bare or as
    ``@register_model(spatial_dims=(3,))`` for a model that is 3D only.

    A builder takes keyword arguments ``in_channels``, ``spatial_dims``, ``stem_stride``
    and returns ``(backbone, num_features)``, the backbone mapping the input to (N, F).
    """

    def register(builder: Builder) -> Builder:
        _MODELS[builder.__name__] = builder
        _SPATIAL_DIMS[builder.__name__] = tuple(spatial_dims)
        return builder

    return register if fn is None else register(fn)


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_MODELS)


def supported_spatial_dims(name: str) -> tuple[int, ...]:
    """The ``spatial_dims`` a registered model accepts, e.g. ``(2, 3)`` or ``(3,)``."""
    _check_name(name)
    return _SPATIAL_DIMS[name]


class Classifier(nn.Module):
    """A backbone, a dropout and a linear head: logits = head(dropout(backbone(x))).

    ``dropout`` is an ``nn.Dropout`` module so that MC dropout can switch it alone to
    train mode. Attributes: ``num_features`` (F), ``num_classes`` (K), ``in_channels``,
    ``spatial_dims``, ``weight_report`` (a :class:`WeightReport` or None).
    """

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        self.num_classes = num_classes
        self.weight_report: WeightReport | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features: (N, C, *spatial) -> (N, num_features)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (N, C, *spatial) -> (N, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def create_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    dropout: float = 0.2,
    stem_stride: int = 1,
    pretrained: str | Path | None = None,
) -> Classifier:
    """Build the registered model ``name``; raise :class:`ConfigError` on a bad argument.

    ``pretrained`` is a local weights file loaded by :func:`load_pretrained`; its report
    is kept as ``model.weight_report``.
    """
    _check_name(name)
    if spatial_dims not in _SPATIAL_DIMS[name]:
        dims = " or ".join(str(d) for d in _SPATIAL_DIMS[name])
        hint = " (use 'resnet18' for 2D images)" if spatial_dims == 2 else ""
        raise ConfigError(
            f"model {name!r} supports spatial_dims {dims}, got {spatial_dims!r}{hint}"
        )
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{arg} must be a whole number >= 1, got {value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if stem_stride not in STEM_STRIDES or isinstance(stem_stride, bool):
        raise ConfigError(
            f"stem_stride must be one of {STEM_STRIDES} (1: 28 px inputs, 2: faster, "
            f"4: the ImageNet stem, 8: large 3D volumes), got {stem_stride!r}"
        )
    backbone, num_features = _MODELS[name](
        in_channels=in_channels, spatial_dims=spatial_dims, stem_stride=stem_stride
    )
    skip_padding_taps(backbone)
    model = Classifier(backbone, num_features, num_classes, float(dropout))
    model.in_channels = in_channels
    model.spatial_dims = spatial_dims
    if pretrained is not None:
        model.weight_report = load_pretrained(model, pretrained)
    return model


def _check_name(name: str) -> None:
    if name in _MODELS:
        return
    close = difflib.get_close_matches(str(name), list_models(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")
