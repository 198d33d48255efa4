"""The model registry: one contract test over every registered model, the factorised
3D ResNets, the stem strides, and loading local pretrained weights."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from medres import models
from medres.errors import ConfigError
from medres.models import (
    Classifier,
    create_model,
    list_models,
    load_pretrained,
    registry,
    supported_spatial_dims,
)

CASES = [(name, dims) for name in list_models() for dims in supported_spatial_dims(name)]
# alternate 1 / 3 input channels and 2 / 5 classes across the cases
CONTRACT = [
    pytest.param(name, dims, (1, 3)[i % 2], (2, 5)[i % 2], id=f"{name}-{dims}d-{(1, 3)[i % 2]}ch")
    for i, (name, dims) in enumerate(CASES)
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # with another process on one of the 2 cores, two OpenMP threads stall each other:
    # this file took 84 s with 2 threads and 20 s with 1 on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input(dims: int, channels: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, *((32, 32) if dims == 2 else (16, 16, 16)))


# 2D runs the default full-resolution stem; 3D the stride-2 stem (8x cheaper, same code)
STEM_FOR = {2: 1, 3: 2}


def test_registry_lists_the_designed_models():
    assert {"resnet18", "resnet50", "resnet18_2p1d", "resnet18_mc"} <= set(list_models())
    assert supported_spatial_dims("resnet18") == (2, 3)
    assert supported_spatial_dims("resnet18_2p1d") == (3,)


@pytest.mark.parametrize(("name", "dims", "in_channels", "num_classes"), CONTRACT)
def test_model_contract(name, dims, in_channels, num_classes):
    torch.manual_seed(0)
    model = create_model(
        name,
        in_channels=in_channels,
        num_classes=num_classes,
        spatial_dims=dims,
        dropout=0.5,
        stem_stride=STEM_FOR[dims],
    )
    x = _input(dims, in_channels)

    model.train()
    logits = model(x)
    assert logits.shape == (2, num_classes)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    grad = model.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        first, second, feats = model(x), model(x), model.features(x)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)
    assert feats.shape == (2, model.num_features)
    torch.testing.assert_close(first, model.head(feats))

    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    model.dropout.train()  # MC dropout: only the dropout samples, BN stays in eval
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        assert torch.equal(model.features(x), feats)


def test_unknown_name_suggests_the_close_match():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("resnet81", in_channels=1, num_classes=2, spatial_dims=2)


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("resnet18_2p1d", {"spatial_dims": 2}, "supports spatial_dims 3"),
        ("resnet18_mc", {"spatial_dims": 2}, "supports spatial_dims 3"),
        ("resnet18", {"spatial_dims": 1}, "supports spatial_dims 2 or 3"),
        ("resnet18", {"in_channels": 0}, "in_channels"),
        ("resnet18", {"num_classes": 0}, "num_classes"),
        ("resnet18", {"dropout": 1.0}, "dropout"),
        ("resnet18", {"dropout": -0.1}, "dropout"),
        ("resnet18", {"stem_stride": 3}, "stem_stride"),
    ],
)
def test_bad_arguments_raise_config_error(name, change, message):
    kwargs = {"in_channels": 1, "num_classes": 2, "spatial_dims": 3} | change
    with pytest.raises(ConfigError, match=message):
        create_model(name, **kwargs)


def test_register_model_adds_a_builder(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_SPATIAL_DIMS", dict(registry._SPATIAL_DIMS))

    @models.register_model(spatial_dims=(2,))
    def tiny(*, in_channels, spatial_dims, stem_stride):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), 4

    assert "tiny" in list_models()
    model = create_model("tiny", in_channels=1, num_classes=3, spatial_dims=2)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


# ---- (2+1)D and mixed convolutions ------------------------------------------------------


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_2p1d_has_the_parameters_of_the_3d_resnet18_and_factorises_every_conv():
    kwargs = {"in_channels": 1, "num_classes": 2, "spatial_dims": 3}
    full, factorised = create_model("resnet18", **kwargs), create_model("resnet18_2p1d", **kwargs)
    assert abs(_count(factorised) - _count(full)) / _count(full) < 0.05
    kernels = {
        m.kernel_size
        for name, m in factorised.backbone.named_modules()
        if isinstance(m, nn.Conv3d) and name.startswith("layer")
    }
    assert kernels == {(3, 3, 1), (1, 1, 3), (1, 1, 1)}  # in-plane, through-plane, shortcut


def _layer_shapes(model: Classifier, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Spatial shape of each of backbone.layer1..4's outputs."""
    shapes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model.backbone, name)
        layer.register_forward_hook(lambda m, i, out, n=name: shapes.__setitem__(n, out.shape[2:]))
    with torch.no_grad():
        model.eval()(x)
    return {k: tuple(v) for k, v in shapes.items()}


def test_mixed_conv_keeps_the_slice_axis_after_layer1_and_2p1d_does_not():
    x = torch.randn(1, 1, 32, 32, 8)
    kwargs = {"in_channels": 1, "num_classes": 2, "spatial_dims": 3}
    mc = _layer_shapes(create_model("resnet18_mc", **kwargs), x)
    assert mc == {"layer1": (32, 32, 8), "layer2": (16, 16, 8), "layer3": (8, 8, 8),
                  "layer4": (4, 4, 8)}  # fmt: skip
    r2p1d = _layer_shapes(create_model("resnet18_2p1d", **kwargs), x)
    assert r2p1d["layer4"] == (4, 4, 1)


# ---- 3D convs that skip kernel taps reading only padding --------------------------------


PADDING_CASES = [  # (input side, kernel, stride, padding, groups)
    (1, 3, 1, 1, 1),  # the last stage at 1³: the centre tap alone reads data
    (2, 3, 2, 1, 1),  # 2³ -> 1³
    (2, 3, 1, 1, 2),
    (3, 3, 2, 1, 1),
    (1, 7, 4, 3, 1),
    (5, 7, 2, 3, 1),  # the cut kernel still needs padding on both sides
    (4, 1, 2, 0, 1),
    (9, 3, 1, 1, 1),  # every tap reads data
    (2, 3, 1, 0, 1),  # no padding: input smaller than the kernel along the last axis
    (1, 1, 3, 1, 1),  # padding wider than the kernel: no tap reads data
    (1, (3, 3, 1), (2, 2, 1), (1, 1, 0), 1),  # resnet18_mc's in-plane conv
    (2, (1, 1, 3), 1, (0, 0, 1), 1),  # resnet18_2p1d's through-plane conv
]


@pytest.mark.parametrize(("size", "kernel", "stride", "padding", "groups"), PADDING_CASES)
def test_padding_aware_conv_matches_nn_conv3d(size, kernel, stride, padding, groups):
    torch.manual_seed(0)
    args = (4, 6, kernel, stride, padding)
    plain = nn.Conv3d(*args, groups=groups, bias=True)
    aware = models.PaddingAwareConv3d(*args, groups=groups, bias=True)
    aware.load_state_dict(plain.state_dict())
    x = torch.randn(3, 4, size + 1, size, size, requires_grad=True)
    try:
        want = plain(x)
    except RuntimeError as error:  # too small for the kernel: the same error, not a result
        with pytest.raises(RuntimeError, match=re.escape(str(error)[:30])):
            aware(x)
        return
    got = aware(x)
    torch.testing.assert_close(got, want)
    weights = torch.linspace(-1, 1, want.numel()).view_as(want)
    grads = [
        torch.autograd.grad((out * weights).sum(), (x, conv.weight, conv.bias))
        for out, conv in ((want, plain), (got, aware))
    ]
    for mine, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize(
    "change", [{"padding": "same"}, {"dilation": 2}, {"padding_mode": "reflect"}]
)
def test_padding_aware_conv_refuses_what_it_cannot_cut(change):
    with pytest.raises(ValueError, match="zero padding and dilation 1"):
        models.PaddingAwareConv3d(2, 2, 3, **{"padding": 1, **change})


def test_live_taps_of_a_3x3x3_kernel_on_the_last_stage_grids():
    assert models.live_taps(1, 3, 1, 1) == (1, 1, 0, 0)  # 1³: the centre tap alone
    assert models.live_taps(2, 3, 2, 1) == (1, 2, 0, 0)  # 2³ -> 1³: 8 of 27 taps
    assert models.live_taps(7, 3, 1, 1) == (0, 2, 1, 1)  # every tap reads data


@pytest.mark.parametrize("name", [n for n in list_models() if 3 in supported_spatial_dims(n)])
def test_3d_models_use_padding_aware_convs_with_the_same_initial_weights(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=2, spatial_dims=3, stem_stride=4)
    torch.manual_seed(0)
    raw, features = registry._MODELS[name](in_channels=1, spatial_dims=3, stem_stride=4)
    plain = Classifier(raw, features, 2, 0.2)  # head drawn after the backbone, as in create_model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(isinstance(m, models.PaddingAwareConv3d) for m in convs)
    assert not any(isinstance(m, models.PaddingAwareConv3d) for m in plain.modules())
    for (key, got), want in zip(model.state_dict().items(),
                                plain.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(got, want), key


# the two stem implementations: MONAI's (resnet18/50, 2D and 3D) and the hand-written 3D one
STEM_CASES = [("resnet18", 2), ("resnet18", 3), ("resnet18_mc", 3)]


@pytest.mark.parametrize(("name", "dims"), STEM_CASES, ids=[f"{n}-{d}d" for n, d in STEM_CASES])
@pytest.mark.parametrize("stem_stride", [1, 2, 4])
def test_stem_stride_sets_the_layer1_grid(name, dims, stem_stride):
    model = create_model(
        name, in_channels=1, num_classes=2, spatial_dims=dims, stem_stride=stem_stride
    ).eval()
    seen = []
    model.backbone.layer1.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(torch.randn(1, 1, 28, 28, *(() if dims == 2 else (4,))))
    assert tuple(seen[0].shape[2:4]) == (28 // stem_stride,) * 2


# ---- pretrained weights -----------------------------------------------------------------


def _randomised_backbone(**kwargs) -> nn.Module:
    """A backbone whose every float tensor (BN statistics too) differs from a fresh one."""
    torch.manual_seed(1)
    backbone = create_model("resnet18", num_classes=2, **kwargs).backbone
    with torch.no_grad():
        for value in backbone.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5)
    return backbone


@pytest.fixture
def imagenet_file(tmp_path):
    """A torchvision-named ImageNet ResNet-18 state dict: RGB 7x7 stem, 1000-class fc."""
    backbone = _randomised_backbone(in_channels=3, spatial_dims=2, stem_stride=4)
    state = dict(backbone.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    return path, state


def _backbone_keys(model: Classifier) -> set[str]:
    return {k for k in model.backbone.state_dict() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("in_channels", [1, 3])
def test_imagenet_weights_load_into_the_backbone(imagenet_file, in_channels):
    path, state = imagenet_file
    model = create_model(
        "resnet18", in_channels=in_channels, num_classes=2, spatial_dims=2, stem_stride=4
    )
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = load_pretrained(model, path)

    assert set(report.matched) == _backbone_keys(model)
    assert report.missing == [] and report.mismatched == []
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    assert "100/100" in report.summary()
    loaded = model.backbone.state_dict()
    expected_conv1 = state["conv1.weight"]
    if in_channels == 1:
        expected_conv1 = expected_conv1.sum(dim=1, keepdim=True)
    torch.testing.assert_close(loaded["conv1.weight"], expected_conv1)
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert all(torch.equal(v, head[k]) for k, v in model.head.state_dict().items())


def test_imagenet_stem_does_not_fit_a_3x3_stem_and_is_reported(imagenet_file):
    path, _ = imagenet_file
    model = create_model(
        "resnet18", in_channels=1, num_classes=2, spatial_dims=2, stem_stride=1, pretrained=path
    )
    report = model.weight_report
    assert report.mismatched == ["conv1.weight"]
    assert report.missing == []
    assert len(report.matched) == len(_backbone_keys(model)) - 1


def test_medicalnet_checkpoint_loads_into_a_3d_resnet18(tmp_path):
    backbone = _randomised_backbone(in_channels=1, spatial_dims=3, stem_stride=4)
    path = tmp_path / "resnet_18_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in backbone.state_dict().items()}}, path)
    model = create_model(
        "resnet18", in_channels=1, num_classes=2, spatial_dims=3, stem_stride=4, pretrained=path
    )
    report = model.weight_report
    assert set(report.matched) == _backbone_keys(model)
    assert report.missing == report.unexpected == report.mismatched == []
    assert torch.equal(model.backbone.conv1.weight, backbone.conv1.weight)


def test_safetensors_of_a_medres_model_load_with_its_head_unexpected(tmp_path):
    torch.manual_seed(2)
    source = create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2)
    report = load_pretrained(model, path)
    assert set(report.matched) == _backbone_keys(model)
    assert set(report.unexpected) == {"head.weight", "head.bias"}
    assert torch.equal(
        model.backbone.layer1[0].conv1.weight, source.backbone.layer1[0].conv1.weight
    )


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"encoder.weight": torch.zeros(3, 3)}, "no weight names matched"),
        (b"not a checkpoint", "cannot read pretrained weights"),
        ([torch.zeros(1)], "not a state dict"),
    ],
    ids=["unrelated-keys", "garbage", "not-a-dict"],
)
def test_unusable_weight_files_raise_config_error(tmp_path, content, message):
    path = _write(tmp_path / "weights.pth", content)
    model = create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2)
    with pytest.raises(ConfigError, match=message):
        load_pretrained(model, path)


def test_2d_weights_do_not_match_a_3d_model(imagenet_file):
    path, _ = imagenet_file
    with pytest.raises(ConfigError, match="no weight names matched"):
        create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=3, pretrained=path)


def test_missing_weights_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(ConfigError, match="not found") as info:
        create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=2, pretrained=path)
    assert str(path) in str(info.value)
