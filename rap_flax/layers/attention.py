"""Attention gates: SRAP/MRAP (residual attentive patterns), MAFC, and the SE / CBAM baselines.

All gates take and return NHWC tensors. Descriptors and gate weights are computed in
float32 whatever the compute dtype, because the top-n sort, the unbiased std and the
sigmoid products are where bfloat16 would lose the ranking and the residual term.

Every gate sows, in the "intermediates" collection, the final per-pixel weight averaged
over channels ("pixel_weight", (B, H, W)) and, except SE which has no spatial branch,
the spatial weight map ("spatial_weight", (B, H, W)); `rap_flax.models.attention_maps`
reads them.
"""

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_flax import spec as spec_lib
from rap_flax.layers.activations import hsigmoid
from rap_flax.layers.conv import Conv
from rap_flax.layers.norm import BatchNorm, flax_momentum

linear_init = nn.initializers.normal(stddev=0.01)


def _unbiased_std(x: jax.Array, axis) -> jax.Array:
  count = math.prod(x.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))
  mean = jnp.mean(x, axis=axis, keepdims=True)
  var = jnp.sum(jnp.square(x - mean), axis=axis) / (count - 1)
  # A constant map (a black image border) has var 0, where sqrt's gradient is infinite
  # and would turn the whole step NaN; the double where keeps the forward value exact
  # and gives that point gradient 0.
  positive = var > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def pool(x: jax.Array, pool_type: str, axis) -> jax.Array:
  """avg / max / unbiased std of `x` over `axis` (axis removed)."""
  if pool_type == "avg":
    return jnp.mean(x, axis=axis)
  if pool_type == "max":
    return jnp.max(x, axis=axis)
  return _unbiased_std(x, axis)


def channel_descriptors(x: jax.Array, pool_types: Sequence[str]) -> list[jax.Array]:
  """(B, C) per pool type, pooled over H and W."""
  return [pool(x, p, (1, 2)) for p in pool_types]


def spatial_descriptors(x: jax.Array, pool_types: Sequence[str]) -> jax.Array:
  """(B, H, W, k): one map per pool type, pooled over channels, in pool-type order."""
  return jnp.stack([pool(x, p, -1) for p in pool_types], axis=-1)


def _largest_descending(values: jax.Array, n: int) -> jax.Array:
  """The n largest values of each row, in descending order.

  A full sort along the channels rather than `lax.top_k`: XLA partitions a sort over its
  batch dimension, so under a batch-sharded jit each device ranks its own examples,
  whereas top_k gathered every device's descriptors onto each device (two all-gathers
  per gate and step).
  """
  return -jnp.sort(-values, axis=-1)[:, :n]


def interleave_top_n(descriptors: Sequence[jax.Array], counts: Sequence[int]) -> jax.Array:
  """Top-n values of each descriptor (descending), interleaved, then the leftover tails.

  With m = min(counts): [t1[0], t2[0], (t3[0],) t1[1], ...] for the first m of each,
  followed by t1[m:], t2[m:], t3[m:] in order. This covers both upstream cases (equal
  counts, where the tails are empty, and unequal ones).
  """
  tops = [_largest_descending(d, n) for d, n in zip(descriptors, counts)]
  m = min(counts)
  batch = descriptors[0].shape[0]
  heads = jnp.stack([t[:, :m] for t in tops], axis=-1).reshape(batch, m * len(tops))
  return jnp.concatenate([heads] + [t[:, m:] for t in tops], axis=-1)


def _product(arrays: Sequence[jax.Array]) -> jax.Array:
  return functools.reduce(jnp.multiply, arrays)


def _check_spatial_size(x: jax.Array, pool_types: Sequence[str], gate: str) -> None:
  if "std" in pool_types and x.shape[1] * x.shape[2] < 2:
    raise ValueError(
        f"{gate}: 'std' pooling over a {x.shape[1]}x{x.shape[2]} feature map is undefined "
        "(unbiased std of one value). Feed larger images, use a CIFAR stem, or choose "
        f"pool types without 'std' (allowed: {spec_lib.POOL_TYPES}).")


def _sow_maps(module: nn.Module, spatial_weight: jax.Array, pixel_weight: jax.Array) -> None:
  module.sow("intermediates", "spatial_weight", spatial_weight)
  module.sow("intermediates", "pixel_weight", pixel_weight)


def spatial_conv_bn(maps: jax.Array, train: bool) -> jax.Array:
  """conv7x7 (k -> 1, no bias) + BatchNorm: the spatial branch of every gate but SE.

  Called inside a gate's compact method, so the layers are that gate's children.
  """
  y = Conv(1, spec_lib.SPATIAL_KERNEL, name="spatial_conv")(maps)
  return BatchNorm(momentum=flax_momentum(spec_lib.GATE_BN_MOMENTUM), name="spatial_bn")(
      y, train)[..., 0]


def channel_mlp(z: jax.Array, hidden: int, features: int) -> jax.Array:
  """Linear(h) -> ReLU -> Linear(C), both with bias (the upstream `mlp`)."""
  z = nn.relu(nn.Dense(hidden, kernel_init=linear_init, name="mlp_hidden")(z))
  return nn.Dense(features, kernel_init=linear_init, name="mlp_out")(z)


def _channel_then_spatial(module: nn.Module, x: jax.Array, channel_weight: jax.Array,
                          spatial_pool_types: Sequence[str], train: bool) -> jax.Array:
  """x * channel_weight, then times sigmoid(spatial_conv_bn(maps of that)): MAFC and CBAM."""
  gated = x.astype(jnp.float32) * channel_weight[:, None, None, :]
  spatial_weight = nn.sigmoid(
      spatial_conv_bn(spatial_descriptors(gated, spatial_pool_types), train))
  _sow_maps(module, spatial_weight,
            jnp.mean(channel_weight, axis=-1)[:, None, None] * spatial_weight)
  return (gated * spatial_weight[..., None]).astype(x.dtype)


class ResidualAttentivePatterns(nn.Module):
  """The SRAP / MRAP gate (one module upstream under two names), docs/upstream.md §1."""
  model_spec: spec_lib.ModelSpec

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pool_types = self.model_spec.pool_types
    _check_spatial_size(x, pool_types, "srap/mrap")
    channels = x.shape[-1]
    x32 = x.astype(jnp.float32)
    channel = channel_descriptors(x32, pool_types)
    spatial = spatial_descriptors(x32, pool_types)
    ranked = interleave_top_n(channel, spec_lib.top_n_counts(channels, self.model_spec.rates))
    channel_weight = nn.relu(channel_mlp(ranked, spec_lib.hidden_width(channels), channels)
                             + nn.sigmoid(_product(channel)))
    spatial_weight = (spatial_conv_bn(spatial, train)
                      + nn.sigmoid(jnp.prod(spatial, axis=-1)))
    weight = 1 + nn.sigmoid(channel_weight[:, None, None, :] * spatial_weight[..., None])
    _sow_maps(self, spatial_weight, jnp.mean(weight, axis=-1))
    return x * weight.astype(x.dtype)


class MAFC(nn.Module):
  """Accumulated features: channel gate on concatenated descriptors, then a spatial gate.

  Upstream hard-codes a 2-input spatial conv; here it takes one map per pool type,
  which is the same for the published two-type setting.
  """
  model_spec: spec_lib.ModelSpec

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pool_types = self.model_spec.pool_types
    _check_spatial_size(x, pool_types, "mafc")
    channels = x.shape[-1]
    x32 = x.astype(jnp.float32)
    accumulated = jnp.concatenate(channel_descriptors(x32, pool_types), axis=-1)
    channel_weight = nn.sigmoid(channel_mlp(accumulated, spec_lib.hidden_width(channels), channels))
    return _channel_then_spatial(self, x, channel_weight, pool_types, train)


class CBAM(nn.Module):
  """CBAM (Woo et al., 2018): shared MLP on avg and max pools, then a 7x7 spatial gate."""
  model_spec: spec_lib.ModelSpec  # CBAM has no options

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    channels = x.shape[-1]
    x32 = x.astype(jnp.float32)
    pooled = jnp.concatenate(channel_descriptors(x32, ("avg", "max")), axis=0)
    avg_logits, max_logits = jnp.split(
        channel_mlp(pooled, spec_lib.hidden_width(channels), channels), 2, axis=0)
    channel_weight = nn.sigmoid(avg_logits + max_logits)
    return _channel_then_spatial(self, x, channel_weight, ("max", "avg"), train)


class SqueezeExcite(nn.Module):
  """MobileNetV3 squeeze-and-excitation with a hard-sigmoid gate."""
  model_spec: spec_lib.ModelSpec  # SE has no options

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train  # no BatchNorm inside
    channels = x.shape[-1]
    squeezed = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    hidden = nn.relu(Conv(spec_lib.make_divisible(channels / 4), 1, use_bias=True, name="reduce")(squeezed))
    channel_weight = hsigmoid(Conv(channels, 1, use_bias=True, name="expand")(hidden))
    # SE has no spatial branch: its per-pixel weight is the same at every position.
    self.sow("intermediates", "pixel_weight", jnp.broadcast_to(
        jnp.mean(channel_weight, axis=(1, 2, 3))[:, None, None], x.shape[:3]))
    return x * channel_weight.astype(x.dtype)


def build_gate(model_spec: spec_lib.ModelSpec, name: str) -> nn.Module | None:
  """A fresh gate module of `model_spec`'s attention named `name` (None for "none")."""
  path = model_spec.gate.flax_module
  return None if path is None else spec_lib.import_object(path)(model_spec=model_spec, name=name)
