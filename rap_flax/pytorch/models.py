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

from collections import OrderedDict
from typing import Sequence

from torch import nn

from rap_flax import spec as spec_lib
from rap_flax.pytorch.gates import build_gate
from rap_flax.pytorch.layers import ConvBlock

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
