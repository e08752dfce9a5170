"""PyTorch reference definitions of the SRAP / MRAP / MAFC attention MobileNets.

Module names reproduce the upstream state-dict layout exactly (`backbone.stage1.unit1.
conv_dw.conv.weight`, `backbone.stage2.unit1.TOPIMAP.ChannelGate.mlp.1.weight`,
`classifier.conv.bias`, ...), so upstream checkpoints load with `strict=True` and weights
exported from the Flax port run here without the upstream repository. Models take NCHW
float images in [0, 1]; `data_bn` normalises them.

Behaviour follows /work/shared/SPEC.md. Every choice SPEC leaves open to doubt (V1 skip,
padding, unbiased std, top-n sizes and interleaving, spatial-map order, V3 pool placement)
was checked against the golden outputs of the upstream code: each alternative moves at
least one golden case's logits by more than 1e-4 relative to their scale.
"""

import dataclasses
import math
from collections import OrderedDict
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

ARCHS = ("mobilenetv1", "mobilenetv2", "mobilenetv3_large", "mobilenetv3_small")
ATTENTIONS = ("none", "srap", "mrap", "mafc", "se", "cbam")
POOL_TYPES = ("avg", "max", "std")

# Upstream attribute name of the gate inside a unit; it becomes part of every key.
_GATE_NAMES = {"srap": "TOPIMAP", "mrap": "TOPIMAP", "mafc": "cbamm", "se": "se", "cbam": "cbam"}
_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish}
_BN_MOMENTUM = 0.1
_GATE_BN_MOMENTUM = 0.01


class ConvBlock(nn.Module):
  """Conv + optional BN + optional activation.

    Padding is symmetric k//2 also at stride 2 (TF-style 'SAME' padding misses golden).
    """

  def __init__(self,
               in_channels,
               out_channels,
               kernel_size=1,
               stride=1,
               groups=1,
               activation: Optional[str] = "relu",
               use_bn=True,
               bias=False,
               bn_momentum=_BN_MOMENTUM):
    super().__init__()
    self.conv = nn.Conv2d(in_channels,
                          out_channels,
                          kernel_size,
                          stride,
                          padding=kernel_size // 2,
                          groups=groups,
                          bias=bias)
    self.bn = nn.BatchNorm2d(out_channels, momentum=bn_momentum) if use_bn else None
    self.activ = _ACTIVATIONS[activation]() if activation else nn.Identity()

  def forward(self, x):
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return self.activ(x)


# ----------------------------------------------------------------------------- gates


def _pool(x, pool_type, dims, keepdim=False):
  if pool_type == "avg":
    return x.mean(dims, keepdim=keepdim)
  if pool_type == "max":
    return x.amax(dims, keepdim=keepdim)
  # Unbiased (divides by H*W-1 or C-1) as upstream; NaN on a 1x1 map or a 1-channel map.
  return x.std(dims, keepdim=keepdim)


def _channel_descriptors(x, pool_types):
  return [_pool(x, p, (2, 3)) for p in pool_types]  # each (B, C)


def _spatial_descriptors(x, pool_types):
  return torch.cat([_pool(x, p, 1, keepdim=True) for p in pool_types], 1)  # (B, k, H, W)


def _hidden_units(channels):
  return channels // 16 or 1  # upstream writes the fallback as channels // channels


def _mlp(in_features, hidden, out_features):
  # The leading Flatten puts the Linears at indices 1 and 3, as in the upstream keys.
  return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                       nn.Linear(hidden, out_features))


def _spatial_conv(in_channels):
  return ConvBlock(in_channels, 1, 7, activation=None, bn_momentum=_GATE_BN_MOMENTUM)


def topn_sizes(channels: int, rates: Sequence[float]) -> Tuple[int, ...]:
  """How many of the largest values each pool type contributes to the SRAP/MRAP vector.

    All but the last use Python's truncating `int(rate * channels)` on the float product
    (so int(0.29 * 100) == 28); the last takes the remaining channels, so its own rate is
    never used. Rounding instead of truncating misses golden (C=16, rates 0.3/0.5/0.2).
    """
  sizes = [int(rate * channels) for rate in rates[:-1]]
  return (*sizes, channels - sum(sizes))


def top_n_patterns(descriptors, sizes):
  """The SRAP/MRAP channel vector (B, C) from per-pool-type descriptors (B, C).

    Takes the `sizes[i]` largest values of descriptor i, sorted descending (values only),
    interleaves the first m = min(sizes) of every list (a1 b1 [c1] a2 b2 [c2] ...), then
    appends each list's leftovers in pool-type order (with 2 types only one has any).
    """
  tops = [d.topk(n, dim=1).values for d, n in zip(descriptors, sizes)]
  m = min(sizes)
  interleaved = torch.stack([t[:, :m] for t in tops], 2).flatten(1)
  return torch.cat([interleaved] + [t[:, m:] for t in tops], 1)


class RAPGate(nn.Module):
  """Residual attentive patterns gate: SRAP and MRAP (identical upstream), SPEC §1."""

  def __init__(self, channels, pool_types, rates):
    super().__init__()
    self.pool_types = tuple(pool_types)
    self.sizes = topn_sizes(channels, rates)
    # Upstream nests both branches inside `ChannelGate`; kept for the key layout.
    self.ChannelGate = nn.ModuleDict({
        "mlp": _mlp(channels, _hidden_units(channels), channels),
        "spatialConv": _spatial_conv(len(self.pool_types)),
    })

  def forward(self, x):
    descriptors = _channel_descriptors(x, self.pool_types)
    gate = self.ChannelGate
    channel = torch.relu(
        gate.mlp(top_n_patterns(descriptors, self.sizes)) + torch.sigmoid(math.prod(descriptors)))
    spatial_maps = _spatial_descriptors(x, self.pool_types)
    spatial = (gate.spatialConv(spatial_maps) +
               torch.sigmoid(math.prod(spatial_maps.split(1, dim=1))))
    return x * (1 + torch.sigmoid(channel[:, :, None, None] * spatial))


class _ChannelSpatialGate(nn.Module):
  """x * sigmoid(channel logits), then * sigmoid(BN(conv7x7(spatial maps)))."""

  def __init__(self, mlp, spatial_pool_types):
    super().__init__()
    self.spatial_pool_types = tuple(spatial_pool_types)
    self.ChannelGate = nn.ModuleDict({"mlp": mlp})
    self.SpatialGate = nn.ModuleDict({"spatial": _spatial_conv(len(spatial_pool_types))})

  def channel_logits(self, x):
    raise NotImplementedError

  def forward(self, x):
    x = x * torch.sigmoid(self.channel_logits(x))[:, :, None, None]
    maps = _spatial_descriptors(x, self.spatial_pool_types)
    return x * torch.sigmoid(self.SpatialGate.spatial(maps))


class MAFCGate(_ChannelSpatialGate):
  """MAFC, SPEC §2: one MLP on the concatenated descriptors of all pool types.

    Upstream hard-codes a 2-input spatial conv (it only ever used two pool types); this
    takes one input per pool type, identical to upstream for two.
    """

  def __init__(self, channels, pool_types):
    k = len(pool_types)
    super().__init__(_mlp(k * channels, _hidden_units(channels), channels), pool_types)
    self.pool_types = tuple(pool_types)

  def channel_logits(self, x):
    return self.ChannelGate.mlp(torch.cat(_channel_descriptors(x, self.pool_types), 1))


class CBAMGate(_ChannelSpatialGate):
  """CBAM (Woo et al. 2018): shared MLP on avg and max descriptors; spatial (max, mean)."""

  def __init__(self, channels):
    super().__init__(_mlp(channels, _hidden_units(channels), channels), ("max", "avg"))

  def channel_logits(self, x):
    return sum(self.ChannelGate.mlp(d) for d in _channel_descriptors(x, ("avg", "max")))


def make_divisible(value, divisor=8):
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class SEGate(nn.Module):
  """MobileNetV3 squeeze-excitation: x * hsigmoid(conv2(relu(conv1(avgpool(x)))))."""

  def __init__(self, channels):
    super().__init__()
    reduced = make_divisible(channels / 4)
    self.conv1 = nn.Conv2d(channels, reduced, 1)
    self.conv2 = nn.Conv2d(reduced, channels, 1)

  def forward(self, x):
    squeezed = x.mean((2, 3), keepdim=True)
    return x * nn.functional.hardsigmoid(self.conv2(torch.relu(self.conv1(squeezed))))


@dataclasses.dataclass(frozen=True)
class Attention:
  """Which gate the units get and with which settings."""

  name: str
  pool_types: Tuple[str, ...] = ("avg", "std")
  rates: Optional[Tuple[float, ...]] = (0.5, 0.5)

  @property
  def module_name(self):
    return _GATE_NAMES[self.name]

  @property
  def on_output(self):
    """MAFC gates a unit's output channels; the others its depthwise conv output."""
    return self.name == "mafc"

  def build(self, channels):
    if self.name in ("srap", "mrap"):
      return RAPGate(channels, self.pool_types, self.rates)
    if self.name == "mafc":
      return MAFCGate(channels, self.pool_types)
    return CBAMGate(channels) if self.name == "cbam" else SEGate(channels)


# ----------------------------------------------------------------------------- units


class _GatedUnit(nn.Module):
  """Holds an optional gate under its upstream name and applies it at its place."""

  def _add_gate(self, attention: Optional[Attention], mid_channels, out_channels):
    self.gate_name = attention.module_name if attention else None
    self.gate_on_output = bool(attention and attention.on_output)
    if attention:
      channels = out_channels if self.gate_on_output else mid_channels
      self.add_module(self.gate_name, attention.build(channels))

  def _gate(self, x, on_output):
    if self.gate_name is None or on_output != self.gate_on_output:
      return x
    return getattr(self, self.gate_name)(x)


class DepthwiseSeparableUnit(_GatedUnit):
  """MobileNetV1 unit: conv_dw (3x3 depthwise) -> conv_pw (1x1).

    Upstream V1 adds an identity skip after conv_pw's ReLU (and after MAFC) when in == out
    and stride 1; without it, or with the add before the ReLU, golden V1 logits move by >0.5.
    """

  def __init__(self, in_channels, out_channels, stride, attention):
    super().__init__()
    self.residual = in_channels == out_channels and stride == 1
    self.conv_dw = ConvBlock(in_channels, in_channels, 3, stride, groups=in_channels)
    self.conv_pw = ConvBlock(in_channels, out_channels)
    self._add_gate(attention, in_channels, out_channels)  # upstream registers it last

  def forward(self, x):
    y = self._gate(self.conv_dw(x), on_output=False)
    y = self._gate(self.conv_pw(y), on_output=True)
    return x + y if self.residual else y


class InvertedResidualUnit(_GatedUnit):
  """MobileNetV2/V3 unit: conv1 1x1 expand -> conv2 kxk depthwise -> conv3 1x1 linear.

    The expand conv is present even when mid == in (golden V3 stage1.unit1 has it).
    """

  def __init__(self, in_channels, mid_channels, out_channels, stride, kernel_size, activation,
               attention):
    super().__init__()
    self.residual = in_channels == out_channels and stride == 1
    self.conv1 = ConvBlock(in_channels, mid_channels, activation=activation)
    self.conv2 = ConvBlock(mid_channels,
                           mid_channels,
                           kernel_size,
                           stride,
                           groups=mid_channels,
                           activation=activation)
    self._add_gate(attention, mid_channels, out_channels)
    self.conv3 = ConvBlock(mid_channels, out_channels, activation=None)

  def forward(self, x):
    y = self._gate(self.conv2(self.conv1(x)), on_output=False)
    y = self._gate(self.conv3(y), on_output=True)
    return x + y if self.residual else y


# ----------------------------------------------------------------------------- backbones


class ArchConfig(NamedTuple):
  init_channels: int
  init_activation: str
  channels: Sequence[Sequence[int]]
  strides: Sequence[int]  # first unit of each stage
  cifar_strides: Sequence[int]  # used with a stride-1 init conv on 32x32 inputs
  mids: Optional[Sequence[Sequence[int]]] = None  # None: MobileNetV1 units
  kernels: Optional[Sequence[int]] = None
  activations: Optional[Sequence[str]] = None
  gated_units: Optional[Sequence[Sequence[int]]] = None  # None: every unit
  final_name: Optional[str] = None  # 1x1 conv after the stages (scaled only for w > 1)
  final_channels: int = 0
  final_activation: Optional[str] = None
  final_gate: bool = False  # gate on the final conv output (V3-small)
  head_channels: int = 0  # post-pool 1x1 conv, no BN/bias (V3 heavy head)


_V3_LARGE_MIDS = [[16], [64, 72], [72, 120, 120], [240, 200, 184, 184, 480, 672], [672, 960, 960]]

CONFIGS = {
    "mobilenetv1":
        ArchConfig(32,
                   "relu", [[64], [128, 128], [256, 256], [512] * 6, [1024, 1024]],
                   strides=(1, 2, 2, 2, 2),
                   cifar_strides=(1, 1, 2, 2, 2)),
    "mobilenetv2":
        ArchConfig(
            32,
            "relu6",
            [[16], [24, 24], [32, 32, 32], [64, 64, 64, 64, 96, 96, 96], [160, 160, 160, 320]],
            strides=(1, 2, 2, 2, 2),
            cifar_strides=(1, 1, 2, 2, 2),
            mids=[[32], [96, 144], [144, 192, 192], [192, 384, 384, 384, 384, 576, 576],
                  [576, 960, 960, 960]],
            kernels=(3,) * 5,
            activations=("relu6",) * 5,
            final_name="final_conv",
            final_channels=1280,
            final_activation="relu6"),
    "mobilenetv3_large":
        ArchConfig(16,
                   "hswish",
                   [[16], [24, 24], [40, 40, 40], [80, 80, 80, 80, 112, 112], [160, 160, 160]],
                   strides=(1, 2, 2, 2, 2),
                   cifar_strides=(1, 1, 2, 2, 2),
                   mids=_V3_LARGE_MIDS,
                   kernels=(3, 3, 5, 3, 5),
                   activations=("relu", "relu", "relu", "hswish", "hswish"),
                   gated_units=[[0], [0, 0], [1, 1, 1], [0, 0, 0, 0, 1, 1], [1, 1, 1]],
                   final_name="final_conv1",
                   final_channels=960,
                   final_activation="hswish",
                   head_channels=1280),
    "mobilenetv3_small":
        ArchConfig(16,
                   "hswish", [[16], [24, 24], [40, 40, 40, 48, 48], [96, 96, 96]],
                   strides=(2, 2, 2, 2),
                   cifar_strides=(1, 2, 2, 2),
                   mids=[[16], [72, 88], [96, 240, 240, 120, 144], [288, 576, 576]],
                   kernels=(3, 3, 5, 5),
                   activations=("relu", "relu", "hswish", "hswish"),
                   gated_units=[[1], [0, 0], [1, 1, 1, 1, 1], [1, 1, 1]],
                   final_name="final_conv1",
                   final_channels=576,
                   final_activation="hswish",
                   final_gate=True,
                   head_channels=1024),
}


def _build_backbone(cfg: ArchConfig, attention, width_multiplier, cifar, lightweight_head):
  """The backbone as an ordered container: its child names are the upstream keys."""
  w = width_multiplier
  in_channels = int(cfg.init_channels * w)
  layers = OrderedDict(data_bn=nn.BatchNorm2d(3, momentum=_BN_MOMENTUM),
                       init_conv=ConvBlock(3,
                                           in_channels,
                                           3,
                                           1 if cifar else 2,
                                           activation=cfg.init_activation))
  strides = cfg.cifar_strides if cifar else cfg.strides
  for i, (stage_channels, stage_stride) in enumerate(zip(cfg.channels, strides)):
    units = OrderedDict()
    for j, out_channels in enumerate(stage_channels):
      out_channels = int(out_channels * w)
      stride = stage_stride if j == 0 else 1
      gated = cfg.gated_units is None or cfg.gated_units[i][j]
      unit_attention = attention if gated else None
      if cfg.mids is None:
        unit = DepthwiseSeparableUnit(in_channels, out_channels, stride, unit_attention)
      else:
        unit = InvertedResidualUnit(in_channels, int(cfg.mids[i][j] * w), out_channels, stride,
                                    cfg.kernels[i], cfg.activations[i], unit_attention)
      units[f"unit{j + 1}"] = unit
      in_channels = out_channels
    layers[f"stage{i + 1}"] = nn.Sequential(units)
  if cfg.final_name:
    final_channels = int(cfg.final_channels * w) if w > 1.0 else cfg.final_channels
    layers[cfg.final_name] = ConvBlock(in_channels, final_channels, activation=cfg.final_activation)
    in_channels = final_channels
    if cfg.final_gate and attention:
      layers["final_attention"] = nn.Sequential(
          OrderedDict({attention.module_name: attention.build(in_channels)}))
  layers["final_pool"] = nn.AdaptiveAvgPool2d(1)
  # Upstream pools before the heavy-head conv (golden V3 misses by >2 with it after).
  if cfg.head_channels and not lightweight_head:
    layers["final_conv2"] = ConvBlock(in_channels,
                                      cfg.head_channels,
                                      activation="hswish",
                                      use_bn=False)
    in_channels = cfg.head_channels
  return nn.Sequential(layers), in_channels


class MobileNet(nn.Module):
  """Backbone (ending in global average pooling) and a 1x1-conv classifier with bias."""

  def __init__(self, backbone, features, num_classes):
    super().__init__()
    self.backbone = backbone
    self.classifier = ConvBlock(features, num_classes, activation=None, use_bn=False, bias=True)

  def forward(self, x):
    return self.classifier(self.backbone(x)).flatten(1)


def init_weights(model: nn.Module) -> nn.Module:
  """Upstream initialisation, in place: convs kaiming-uniform (fan_in, gain sqrt 2) except
    the classifier (xavier-normal), Linear N(0, 0.01), every bias 0, BN weight 1."""
  for name, module in model.named_modules():
    if isinstance(module, nn.Conv2d):
      if name.endswith("classifier.conv"):
        nn.init.xavier_normal_(module.weight)
      else:
        nn.init.kaiming_uniform_(module.weight)
    elif isinstance(module, nn.Linear):
      nn.init.normal_(module.weight, 0.0, 0.01)
    elif isinstance(module, nn.BatchNorm2d):
      nn.init.ones_(module.weight)
    else:
      continue
    if module.bias is not None:
      nn.init.zeros_(module.bias)
  return model


def _validate(arch, attention, pool_types, rates, width_multiplier, num_classes):
  if arch not in CONFIGS:
    raise ValueError(f"Unknown arch {arch!r}; choose one of {ARCHS}.")
  if attention not in ATTENTIONS:
    raise ValueError(f"Unknown attention {attention!r}; choose one of {ATTENTIONS}.")
  if width_multiplier <= 0:
    raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}.")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  if attention not in ("srap", "mrap", "mafc"):
    return
  unknown = [p for p in pool_types if p not in POOL_TYPES]
  if unknown:
    raise ValueError(f"Unknown pool type(s) {unknown}; allowed: {POOL_TYPES}.")
  if len(pool_types) not in (2, 3) or len(set(pool_types)) != len(pool_types):
    raise ValueError(f"pool_types must be 2 or 3 distinct names from {POOL_TYPES}, "
                     f"got {tuple(pool_types)}.")
  if attention == "mafc":
    return  # MAFC has no top-n selection, so rates are ignored
  if rates is None or len(rates) != len(pool_types):
    raise ValueError(f"rates {rates} must give one rate per pool type "
                     f"({len(pool_types)} for {tuple(pool_types)}).")
  if any(r < 0 for r in rates) or sum(rates) > 1 + 1e-9:
    raise ValueError(f"rates {tuple(rates)} must be >= 0 and sum to at most 1.")


def create_model(arch: str,
                 num_classes: int,
                 attention: str = "srap",
                 pool_types: Sequence[str] = ("avg", "std"),
                 rates: Optional[Sequence[float]] = (0.5, 0.5),
                 width_multiplier: float = 1.0,
                 cifar: bool = False,
                 lightweight_head: bool = False) -> MobileNet:
  """Builds an initialised model with the upstream state-dict layout (NCHW, [0,1] input).

    `pool_types`/`rates` configure srap/mrap; mafc uses only `pool_types`; none/se/cbam
    use neither. `lightweight_head` drops the V3 post-pool 1280/1024 conv.
    """
  _validate(arch, attention, pool_types, rates, width_multiplier, num_classes)
  gate = None
  if attention != "none":
    gate = Attention(attention, tuple(pool_types), tuple(rates) if rates is not None else None)
  backbone, features = _build_backbone(CONFIGS[arch], gate, width_multiplier, cifar,
                                       lightweight_head)
  return init_weights(MobileNet(backbone, features, num_classes))
