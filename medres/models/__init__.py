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

Modules: :mod:`~medres.models.registry` (registry, :class:`Classifier`,
:func:`create_model`), :mod:`~medres.models.resnets` (the registered models),
:mod:`~medres.models.convs` (:class:`PaddingAwareConv3d`) and
:mod:`~medres.models.pretrained` (:func:`load_pretrained`). Importing this package
registers every model.
"""

from medres.models.convs import PaddingAwareConv3d, live_taps
from medres.models.pretrained import WeightReport, load_pretrained
from medres.models.registry import (
    STEM_STRIDES,
    Builder,
    Classifier,
    create_model,
    list_models,
    register_model,
    supported_spatial_dims,
)
from medres.models.resnets import resnet18, resnet18_2p1d, resnet18_mc, resnet50

__all__ = [
    "STEM_STRIDES",
    "Builder",
    "Classifier",
    "PaddingAwareConv3d",
    "WeightReport",
    "create_model",
    "list_models",
    "live_taps",
    "load_pretrained",
    "register_model",
    "resnet18",
    "resnet18_2p1d",
    "resnet18_mc",
    "resnet50",
    "supported_spatial_dims",
]
