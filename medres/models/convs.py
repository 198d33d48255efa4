"""3D convolutions that skip the kernel taps reading only zero padding.

Hand-written: PyTorch (oneDNN) multiplies every tap, and on the 1³ grid of a 3D ResNet's
last stage the backward of such a 3x3x3 conv (26 of 27 taps on padding) dominated a step.
:class:`PaddingAwareConv3d` gives ``nn.Conv3d``'s outputs and gradients with its kernel
cut to the live taps; :func:`skip_padding_taps` swaps it in, in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def skip_padding_taps(module: nn.Module) -> None:
    """Replace, in place, every zero-padded, undilated ``nn.Conv3d`` in ``module`` by a
    :class:`PaddingAwareConv3d` holding the same parameters (no random numbers drawn)."""
    for name, conv in module.named_children():
        if not (
            type(conv) is nn.Conv3d
            and conv.padding_mode == "zeros"
            and conv.dilation == (1, 1, 1)
            and not isinstance(conv.padding, str)
        ):
            skip_padding_taps(conv)
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
