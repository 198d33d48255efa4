"""Model registry (timm-like): ``create_model(name, ...)`` builds a ResNet :class:`Classifier`.

``logits = head(dropout(backbone(x)))`` with ``backbone(x)`` the pooled (N, F) features.
Inputs are (N, C, X, Y) in 2D and (N, C, X, Y, Z) in 3D, Z across slices. Models:
``resnet18``/``resnet50`` (MONAI, 2D or 3D, F = 512 / 2048); ``resnet18_2p1d`` (3D, every
3x3x3 conv factorised in-plane (3,3,1) then through-plane (1,1,3), Tran et al. 2018) and
``resnet18_mc`` (3D, mixed: 3D stem and layer1, in-plane layers 2-4 that keep Z).

Every 3D conv is a :class:`PaddingAwareConv3d`: same outputs and gradients as
``nn.Conv3d``, but it leaves out the kernel taps that read only zero padding (layer 4
sees a 2³ → 1³ grid at 28³ and 64³ inputs with their automatic stem strides 4 and 8; a
training step at 28³ is 1.6× faster).

``stem_stride`` for every model: 1 -> 3x3(x3) conv stride 1, no max-pool (28 px inputs);
2 -> 7x7(x7) stride 2; 4 -> 7x7(x7) stride 2 + 3x3 max-pool stride 2 (ImageNet stem);
8 -> 7x7(x7) stride 4 + max-pool (for 3D volumes of 64^3 and more, whose first stage
would otherwise cost ~8x more than at stride 4).
:func:`load_pretrained` loads a local torchvision (ImageNet) or MedicalNet checkpoint into
the backbone and reports what matched; nothing is downloaded. Example::

    model = create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2,
                         stem_stride=4, pretrained="resnet18-imagenet.pth")
    print(model.weight_report.summary())
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks import nets
from safetensors.torch import load_file
from torch import nn

from medres.errors import ConfigError

Builder = Callable[..., tuple[nn.Module, int]]  # (in_channels, spatial_dims, stem_stride)
_MODELS: dict[str, Builder] = {}
_SPATIAL_DIMS: dict[str, tuple[int, ...]] = {}
STEM_STRIDES = (1, 2, 4, 8)
_STEMS = {
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
    _skip_padding_taps(backbone)
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


# ---- 3D convs that skip kernel taps reading only padding ---------------------------------
# Hand-written: PyTorch (oneDNN) multiplies every tap, and on the 1³ grid of a 3D ResNet's
# last stage the backward of such a 3x3x3 conv (26 of 27 taps on padding) dominated a step.


def live_taps(size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """Along one axis of ``size`` voxels (zero ``padding`` each side): ``(first, last,
    before, after)``, the kernel taps ``first..last`` that read at least one voxel and the
    zero padding the kernel cut to those taps still needs before and after the input."""
    outputs = (size + 2 * padding - kernel) // stride + 1
    first = max(0, padding - (outputs - 1) * stride)
    last = min(kernel - 1, size - 1 + padding)
    after = max(0, (outputs - 1) * stride - padding + last - (size - 1))
    return first, last, padding - first, after


class PaddingAwareConv3d(nn.Conv3d):
    """``nn.Conv3d`` (zero padding, dilation 1) that convolves with its kernel cut to the
    taps reading data: the same outputs and gradients, far less work on tiny grids. The
    weight keeps its full shape, so checkpoints and pretrained files are unchanged."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        numeric = not isinstance(self.padding, str)
        if not (numeric and self.padding_mode == "zeros" and self.dilation == (1, 1, 1)):
            raise ValueError(
                "PaddingAwareConv3d needs numeric zero padding and dilation 1; got "
                f"padding={self.padding!r}, padding_mode={self.padding_mode!r}, "
                f"dilation={self.dilation}; use nn.Conv3d"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = zip(x.shape[2:], self.kernel_size, self.stride, self.padding, strict=True)
        axes = [live_taps(n, k, s, p) for n, k, s, p in grid]
        if any(last < first or before < 0 for first, last, before, _ in axes):
            return super().forward(x)  # input smaller than the kernel: nn.Conv3d's answer
        weight = self.weight[(..., *(slice(first, last + 1) for first, last, _, _ in axes))]
        if weight.shape == self.weight.shape:
            return super().forward(x)
        pad = [n for _, _, before, after in reversed(axes) for n in (before, after)]
        if any(pad):
            x = F.pad(x, pad)
        return F.conv3d(x, weight, self.bias, self.stride, 0, 1, self.groups)


def _skip_padding_taps(module: nn.Module) -> None:
    """Replace, in place, every zero-padded, undilated ``nn.Conv3d`` in ``module`` by a
    :class:`PaddingAwareConv3d` holding the same parameters (no random numbers drawn)."""
    for name, conv in module.named_children():
        if not (
            type(conv) is nn.Conv3d
            and conv.padding_mode == "zeros"
            and conv.dilation == (1, 1, 1)
            and not isinstance(conv.padding, str)
        ):
            _skip_padding_taps(conv)
            continue
        aware = PaddingAwareConv3d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            groups=conv.groups,
            bias=conv.bias is not None,
            device="meta",
        )
        aware.weight, aware.bias = conv.weight, conv.bias
        setattr(module, name, aware)


# ---- MONAI ResNets (2D and 3D) ---------------------------------------------------------


def _monai_resnet(factory, in_channels: int, spatial_dims: int, stem_stride: int) -> nn.Module:
    kernel, stride, max_pool = _STEMS[stem_stride]
    net = factory(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=kernel,
        conv1_t_stride=stride,
        no_max_pool=not max_pool,
        shortcut_type="B",  # 1x1 conv + BN shortcut, as torchvision (downsample.0/.1)
        bias_downsample=False,  # torchvision's shortcut conv has no bias
        feed_forward=False,
    )
    net.fc = nn.Identity()
    return net


@register_model
def resnet18(*, in_channels: int, spatial_dims: int, stem_stride: int) -> tuple[nn.Module, int]:
    """MONAI ResNet-18 (BasicBlock, [2, 2, 2, 2]); F = 512."""
    return _monai_resnet(nets.resnet18, in_channels, spatial_dims, stem_stride), 512


@register_model
def resnet50(*, in_channels: int, spatial_dims: int, stem_stride: int) -> tuple[nn.Module, int]:
    """MONAI ResNet-50 (Bottleneck, [3, 4, 6, 3]); F = 2048."""
    return _monai_resnet(nets.resnet50, in_channels, spatial_dims, stem_stride), 2048


# ---- factorised 3D ResNet-18s: (2+1)D and mixed convolutions ---------------------------
# Hand-written: MONAI has no factorised ResNet, and torchvision's video ResNets assume
# 3-channel video stems and would pin a torchvision version to torch.

Stride = tuple[int, int, int]
ConvFactory = Callable[[int, int, Stride], nn.Module]  # (in, out, stride) -> conv
Stage = tuple[ConvFactory, Stride]  # the conv of a stage and its first block's stride


def _conv3x3x3(cin: int, cout: int, stride: Stride, z: int = 3) -> nn.Module:
    """Conv with kernel (3, 3, z): full 3D, or in-plane only (mixes X and Y) when z = 1."""
    return nn.Conv3d(cin, cout, (3, 3, z), stride=stride, padding=(1, 1, z // 2), bias=False)


def _conv3x3x1(cin: int, cout: int, stride: Stride) -> nn.Module:
    return _conv3x3x3(cin, cout, stride, z=1)


def _conv2plus1d(cin: int, cout: int, stride: Stride) -> nn.Module:
    """(2+1)D conv: in-plane (3,3,1) -> BN -> ReLU -> through-plane (1,1,3).

    Mid channels M = 27·cin·cout // (9·cin + 3·cout) give the 3x3x3 conv's parameters.
    """
    mid = (27 * cin * cout) // (9 * cin + 3 * cout)
    sx, sy, sz = stride
    return nn.Sequential(
        nn.Conv3d(cin, mid, (3, 3, 1), stride=(sx, sy, 1), padding=(1, 1, 0), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (1, 1, 3), stride=(1, 1, sz), padding=(0, 0, 1), bias=False),
    )


class _BasicBlock3d(nn.Module):
    """ResNet basic block on (N, C, X, Y, Z); ``conv`` builds its two convolutions."""

    def __init__(self, cin: int, cout: int, conv: ConvFactory, stride: Stride):
        super().__init__()
        self.conv1 = conv(cin, cout, stride)
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(cout, cout, (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(cout)
        self.downsample = None
        if stride != (1, 1, 1) or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class _ResNet18_3d(nn.Module):
    """ResNet-18 layout on (N, C, X, Y, Z) -> (N, 512), one conv factory per stage.

    Module names follow torchvision (conv1, bn1, layer1.0.conv1, ..., downsample.0).
    """

    def __init__(self, in_channels: int, stem_stride: int, stages: list[Stage]):
        super().__init__()
        kernel, stride, max_pool = _STEMS[stem_stride]
        self.conv1 = nn.Conv3d(in_channels, 64, kernel, stride, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1) if max_pool else nn.Identity()
        layers, cin = [], 64
        for (conv, s), width in zip(stages, (64, 128, 256, 512), strict=True):
            blocks = [
                _BasicBlock3d(cin, width, conv, s),
                _BasicBlock3d(width, width, conv, (1, 1, 1)),
            ]
            layers.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@register_model(spatial_dims=(3,))
def resnet18_2p1d(*, in_channels: int, spatial_dims: int, stem_stride: int):
    """ResNet-18 with (2+1)D convs (R(2+1)D-18, full 3D stem); F = 512."""
    first, down = (_conv2plus1d, (1, 1, 1)), (_conv2plus1d, (2, 2, 2))
    return _ResNet18_3d(in_channels, stem_stride, [first, down, down, down]), 512


@register_model(spatial_dims=(3,))
def resnet18_mc(*, in_channels: int, spatial_dims: int, stem_stride: int):
    """Mixed-convolution ResNet-18 (MC3-18): 3D stem + layer1, in-plane layers 2-4; F = 512."""
    first, down = (_conv3x3x3, (1, 1, 1)), (_conv3x3x1, (2, 2, 1))
    return _ResNet18_3d(in_channels, stem_stride, [first, down, down, down]), 512


# ---- pretrained weights ----------------------------------------------------------------


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
