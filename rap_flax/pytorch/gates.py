"""The attention gates in PyTorch, with the upstream sub-module paths (docs/upstream.md §1).

Each class is named by its `rap_flax.spec.Gate` entry (`torch_module`) and built as
`Class(model_spec, channels)`; it takes and returns NCHW tensors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rap_flax import spec as spec_lib
from rap_flax.pytorch.layers import ConvBlock


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


class SpecGate(nn.Module):
  """Holds its sub-modules at the upstream paths that the gate's spec entry names."""

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


class RAPGate(SpecGate):
  """SRAP / MRAP (one module upstream under two names)."""

  def __init__(self, model_spec: spec_lib.ModelSpec, channels: int):
    pool_types = model_spec.pool_types
    super().__init__(model_spec.gate, {"mlp_hidden": _mlp(channels, channels),
                                       "spatial_conv": _spatial_conv(len(pool_types))})
    self.pool_types = pool_types
    self.counts = spec_lib.top_n_counts(channels, model_spec.rates)

  def forward(self, x):
    descriptors = _channel_pools(x, self.pool_types)
    channel = torch.relu(self.sub("mlp_hidden")(top_n_vector(descriptors, self.counts))
                         + torch.sigmoid(math.prod(descriptors)))
    maps = _spatial_pools(x, self.pool_types)
    spatial = self.sub("spatial_conv")(maps) + torch.sigmoid(math.prod(maps.split(1, dim=1)))
    return x * (1 + torch.sigmoid(channel[:, :, None, None] * spatial))


class _ChannelThenSpatialGate(SpecGate):
  """x * sigmoid(channel MLP), then times sigmoid(BN(conv7x7(spatial maps of that)))."""

  def __init__(self, gate: spec_lib.Gate, mlp_inputs: int, channels: int,
               spatial_pool_types: tuple[str, ...]):
    super().__init__(gate, {"mlp_hidden": _mlp(mlp_inputs, channels),
                            "spatial_conv": _spatial_conv(len(spatial_pool_types))})
    self.spatial_pool_types = spatial_pool_types

  def channel_logits(self, x):
    raise NotImplementedError

  def forward(self, x):
    x = x * torch.sigmoid(self.channel_logits(x))[:, :, None, None]
    return x * torch.sigmoid(self.sub("spatial_conv")(_spatial_pools(x, self.spatial_pool_types)))


class MAFCGate(_ChannelThenSpatialGate):
  """MAFC: one MLP on the concatenated descriptors of all pool types."""

  def __init__(self, model_spec: spec_lib.ModelSpec, channels: int):
    self.pool_types = model_spec.pool_types
    super().__init__(model_spec.gate, len(self.pool_types) * channels, channels,
                     self.pool_types)

  def channel_logits(self, x):
    return self.sub("mlp_hidden")(torch.cat(_channel_pools(x, self.pool_types), 1))


class CBAMGate(_ChannelThenSpatialGate):
  """CBAM: a shared MLP on the avg and max descriptors, summed; spatial maps (max, avg)."""

  def __init__(self, model_spec: spec_lib.ModelSpec, channels: int):
    super().__init__(model_spec.gate, channels, channels, ("max", "avg"))

  def channel_logits(self, x):
    mlp = self.sub("mlp_hidden")
    return sum(mlp(d) for d in _channel_pools(x, ("avg", "max")))


class SEGate(nn.Module):
  """MobileNetV3 squeeze-excitation: x * hsigmoid(conv2(relu(conv1(avgpool(x)))))."""

  def __init__(self, model_spec: spec_lib.ModelSpec, channels: int):
    del model_spec  # SE has no options
    super().__init__()
    reduced = spec_lib.make_divisible(channels / 4)
    self.conv1 = nn.Conv2d(channels, reduced, 1)
    self.conv2 = nn.Conv2d(reduced, channels, 1)

  def forward(self, x):
    squeezed = x.mean((2, 3), keepdim=True)
    return x * nn.functional.hardsigmoid(self.conv2(torch.relu(self.conv1(squeezed))))


def build_gate(model_spec: spec_lib.ModelSpec, channels: int) -> nn.Module:
  """The gate module of `model_spec`'s attention for `channels` channels."""
  return spec_lib.import_object(model_spec.gate.torch_module)(model_spec, channels)
