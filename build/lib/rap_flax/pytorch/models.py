"""The same networks in PyTorch, with the upstream state-dict layout, built from `rap_flax.spec`.

Module names reproduce the upstream keys exactly (`backbone.stage1.unit1.conv_dw.conv.weight`,
`backbone.stage2.unit1.TOPIMAP.ChannelGate.mlp.1.weight`, `classifier.conv.bias`, ...), so
upstream checkpoints load with `strict=True` and weights exported from the Flax port run
here without the upstream repository. Models take NCHW float images in [0, 1]; `data_bn`
normalises them. Every choice docs/upstream.md leaves open to doubt (V1 skip, padding,
unbiased std, top-n sizes and interleaving, spatial-map order, V3 pool placement) was
checked against the golden outputs of the upstream code.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
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


# ----------------------------------------------------------------------------- gates


def _pool(x, pool_type: str, dims, keepdim: bool = False):
  if pool_type == "avg":
    return x.mean(dims, keepdim=keepdim)
  if pool_type == "max":
    return x.amax(dims, keepdim=keepdim)
  return x.std(dims, keepdim=keepdim)  # unbiased, as upstream (NaN on a single value)


def _channel_pools(x, pool_types):
  return [_pool(x, p, (2, 3)) for p in pool_types]  # each (B, C)


def _spatial_pools(x, pool_types):
  return torch.cat([_pool(x, p, 1, keepdim=True) for p in pool_types], 1)  # (B, k, H, W)


def top_n_vector(descriptors, counts):
  """Each descriptor's top-n values (descending), the first min(counts) interleaved, then
  the leftover tails in pool-type order: the SRAP/MRAP channel vector (B, C)."""
  tops = [d.topk(n, dim=1).values for d, n in zip(descriptors, counts)]
  m = min(counts)
  interleaved = torch.stack([t[:, :m] for t in tops], 2).flatten(1)
  return torch.cat([interleaved] + [t[:, m:] for t in tops], 1)


def _mlp(in_features: int, channels: int):
  # The leading Flatten puts the Linears at indices 1 and 3, as in the upstream keys.
  return nn.Sequential(nn.Flatten(), nn.Linear(in_features, spec_lib.hidden_width(channels)),
                       nn.ReLU(), nn.Linear(spec_lib.hidden_width(channels), channels))


def _spatial_conv(pool_count: int):
  return ConvBlock(pool_count, 1, spec_lib.SPATIAL_KERNEL, activation="none",
                   bn_momentum=spec_lib.GATE_BN_MOMENTUM)


class _Gate(nn.Module):
  """Holds its sub-modules at the upstream paths that `rap_flax.spec` names."""

  def __init__(self, gate: spec_lib.Gate, modules: dict[str, nn.Module]):
    super().__init__()
    self._paths = {}
    for flax_child, module in modules.items():
      # The spec names weights ("ChannelGate.mlp.1"); the module is the weight's parent.
      path = gate.children[flax_child].rsplit(".", 1)[0]
      parent = self
      *containers, leaf = path.split(".")
      for name in containers:
        if not hasattr(parent, name):
          parent.add_module(name, nn.ModuleDict())
        parent = getattr(parent, name)
      if leaf not in parent._modules:  # pylint: disable=protected-access
        parent.add_module(leaf, module)
      self._paths[flax_child] = path

  def sub(self, flax_child: str) -> nn.Module:
    return self.get_submodule(self._paths[flax_child])


class RAPGate(_Gate):
  """SRAP / MRAP (one module upstream under two names), docs/upstream.md §1."""

  def __init__(self, gate: spec_lib.Gate, channels: int, pool_types, rates):
    super().__init__(gate, {"mlp_hidden": _mlp(channels, channels),
                            "spatial_conv": _spatial_conv(len(pool_types))})
    self.pool_types = tuple(pool_types)
    self.counts = spec_lib.top_n_counts(channels, rates)

  def forward(self, x):
    descriptors = _channel_pools(x, self.pool_types)
    channel = torch.relu(self.sub("mlp_hidden")(top_n_vector(descriptors, self.counts))
                         + torch.sigmoid(math.prod(descriptors)))
    maps = _spatial_pools(x, self.pool_types)
    spatial = self.sub("spatial_conv")(maps) + torch.sigmoid(math.prod(maps.split(1, dim=1)))
    return x * (1 + torch.sigmoid(channel[:, :, None, None] * spatial))


class ChannelThenSpatialGate(_Gate):
  """MAFC (one MLP on the concatenated descriptors of all pool types) and CBAM (a shared MLP
  on the avg and max descriptors, summed): x * sigmoid(MLP), then times
  sigmoid(BN(conv7x7(spatial maps of that)))."""

  def __init__(self, gate: spec_lib.Gate, channels: int, pool_types):
    is_cbam = gate.name == "cbam"
    pool_types = ("avg", "max") if is_cbam else tuple(pool_types)
    spatial_pool_types = ("max", "avg") if is_cbam else pool_types
    mlp_inputs = channels if is_cbam else len(pool_types) * channels
    super().__init__(gate, {"mlp_hidden": _mlp(mlp_inputs, channels),
                            "spatial_conv": _spatial_conv(len(spatial_pool_types))})
    self.is_cbam, self.pool_types = is_cbam, pool_types
    self.spatial_pool_types = spatial_pool_types

  def forward(self, x):
    descriptors = _channel_pools(x, self.pool_types)
    mlp = self.sub("mlp_hidden")
    logits = (sum(mlp(d) for d in descriptors) if self.is_cbam
              else mlp(torch.cat(descriptors, 1)))
    x = x * torch.sigmoid(logits)[:, :, None, None]
    return x * torch.sigmoid(self.sub("spatial_conv")(_spatial_pools(x, self.spatial_pool_types)))


class SEGate(nn.Module):
  """MobileNetV3 squeeze-excitation: x * hsigmoid(conv2(relu(conv1(avgpool(x)))))."""

  def __init__(self, channels: int):
    super().__init__()
    reduced = spec_lib.make_divisible(channels / 4)
    self.conv1 = nn.Conv2d(channels, reduced, 1)
    self.conv2 = nn.Conv2d(reduced, channels, 1)

  def forward(self, x):
    squeezed = x.mean((2, 3), keepdim=True)
    return x * nn.functional.hardsigmoid(self.conv2(torch.relu(self.conv1(squeezed))))


def build_gate(model_spec: spec_lib.ModelSpec, channels: int) -> nn.Module:
  gate = model_spec.gate
  if gate.uses_rates:
    return RAPGate(gate, channels, model_spec.pool_types, model_spec.rates)
  if gate.name in ("mafc", "cbam"):
    return ChannelThenSpatialGate(gate, channels, model_spec.pool_types)
  return SEGate(channels)


# ----------------------------------------------------------------------------- units


class Unit(nn.Module):
  """A V1 separable unit (conv_dw -> conv_pw) or a V2/V3 inverted residual unit
  (conv1 -> conv2 depthwise -> conv3), its gate registered under the upstream name."""

  def __init__(self, model_spec: spec_lib.ModelSpec, unit: spec_lib.Unit):
    super().__init__()
    self.unit = unit
    if unit.mid_channels is None:
      self.conv_dw = ConvBlock(unit.in_channels, unit.in_channels, 3, unit.stride,
                               groups=unit.in_channels)
      self.conv_pw = ConvBlock(unit.in_channels, unit.out_channels)
    else:
      mid = unit.mid_channels
      self.conv1 = ConvBlock(unit.in_channels, mid, activation=unit.activation)
      self.conv2 = ConvBlock(mid, mid, unit.kernel_size, unit.stride, groups=mid,
                             activation=unit.activation)
    self.gate_name, self.gate_after_projection = None, False
    if unit.gated:
      gate = model_spec.gate
      self.gate_name, self.gate_after_projection = gate.upstream_name, gate.after_projection
      self.add_module(gate.upstream_name, build_gate(model_spec, unit.gate_channels(gate)))
    if unit.mid_channels is not None:  # registered after the gate, as upstream
      self.conv3 = ConvBlock(unit.mid_channels, unit.out_channels, activation="none")

  def _gate(self, x, after_projection: bool):
    if self.gate_name is None or after_projection != self.gate_after_projection:
      return x
    return getattr(self, self.gate_name)(x)

  def forward(self, x):
    if self.unit.mid_channels is None:
      y = self._gate(self.conv_dw(x), after_projection=False)
      y = self.conv_pw(y)
    else:
      y = self._gate(self.conv2(self.conv1(x)), after_projection=False)
      y = self.conv3(y)
    y = self._gate(y, after_projection=True)
    return x + y if self.unit.residual else y


# ----------------------------------------------------------------------------- models


def _backbone(model_spec: spec_lib.ModelSpec) -> nn.Sequential:
  plan = model_spec.plan()
  layers = OrderedDict(
      data_bn=nn.BatchNorm2d(3, momentum=spec_lib.BN_MOMENTUM),
      init_conv=ConvBlock(3, plan.init_channels, 3, plan.init_stride,
                          activation=plan.init_activation))
  for index, units in enumerate(plan.stages):
    layers[f"stage{index + 1}"] = nn.Sequential(OrderedDict(
        (f"unit{unit.index}", Unit(model_spec, unit)) for unit in units))
  if plan.final_name is not None:
    last_unit = plan.stages[-1][-1]
    layers[plan.final_name] = ConvBlock(last_unit.out_channels, plan.final_channels,
                                        activation=plan.final_activation)
    if plan.final_gate:
      gate = model_spec.gate
      layers["final_attention"] = nn.Sequential(OrderedDict(
          {gate.upstream_name: build_gate(model_spec, plan.final_channels)}))
  # Upstream pools before the heavy-head conv.
  layers["final_pool"] = nn.AdaptiveAvgPool2d(1)
  if plan.head_channels is not None:
    layers["final_conv2"] = ConvBlock(plan.final_channels, plan.head_channels,
                                      activation="hswish", use_bn=False)
  return nn.Sequential(layers)


class MobileNet(nn.Module):
  """Backbone (ending in global average pooling) and a 1x1-conv classifier with bias."""

  def __init__(self, model_spec: spec_lib.ModelSpec):
    super().__init__()
    self.model_spec = model_spec
    self.backbone = _backbone(model_spec)
    self.classifier = ConvBlock(model_spec.plan().features, model_spec.num_classes,
                                activation="none", use_bn=False, bias=True)

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


def create_model(arch: str | spec_lib.ModelSpec, num_classes: int | None = None,
                 attention: str = "srap", pool_types: Sequence[str] = ("avg", "std"),
                 rates: Sequence[float] | None = (0.5, 0.5), width_multiplier: float = 1.0,
                 cifar: bool = False, lightweight_head: bool = False) -> MobileNet:
  """An initialised model with the upstream state-dict layout (NCHW input in [0, 1]); the
  same arguments as `rap_flax.models.create_model` (or a whole ModelSpec)."""
  model_spec = arch if isinstance(arch, spec_lib.ModelSpec) else spec_lib.ModelSpec(
      arch, num_classes, attention, tuple(pool_types),
      None if rates is None else tuple(rates), width_multiplier, cifar, lightweight_head)
  return init_weights(MobileNet(model_spec))
