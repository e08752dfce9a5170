"""PyTorch building blocks shared by the gates and the backbones."""

from __future__ import annotations

from torch import nn

from rap_flax import spec as spec_lib

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, "none": nn.Identity}


class ConvBlock(nn.Module):
  """conv (symmetric k // 2 padding, also at stride 2) + optional BN + activation."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
               groups: int = 1, activation: str = "relu", use_bn: bool = True,
               bias: bool = False, bn_momentum: float = spec_lib.BN_MOMENTUM):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                          padding=kernel_size // 2, groups=groups, bias=bias)
    self.bn = nn.BatchNorm2d(out_channels, momentum=bn_momentum) if use_bn else None
    self.activ = _ACTIVATIONS[activation]()

  def forward(self, x):
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return self.activ(x)
