"""MobileNetV1 / V2 / V3 in Flax, built from the framework-free plan of `rap_flax.spec`.

Module names mirror the upstream PyTorch modules (backbone.stageS.unitU.conv1, ...) so that
weight conversion is a path-by-path mapping.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_flax import spec as spec_lib
from rap_flax.layers.attention import build_gate
from rap_flax.layers.conv import Conv, ConvBlock
from rap_flax.layers.norm import BatchNorm

xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def _apply_gate(model_spec: spec_lib.ModelSpec, unit: spec_lib.Unit, x: jax.Array,
                train: bool, after_projection: bool) -> jax.Array:
  if not unit.gated or model_spec.gate.after_projection != after_projection:
    return x
  return build_gate(model_spec, name="attention")(x, train)


class Unit(nn.Module):
  """A MobileNetV1 separable unit (depthwise 3x3 -> pointwise 1x1) or a V2/V3 inverted
  residual unit (1x1 expand -> depthwise kxk -> 1x1 project), with its gate and skip."""
  model_spec: spec_lib.ModelSpec
  unit: spec_lib.Unit
  dtype: Any = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    unit, identity = self.unit, x
    block = functools.partial(ConvBlock, dtype=self.dtype,
                              depthwise_implementation=self.depthwise_implementation)
    if unit.mid_channels is None:
      x = block(unit.in_channels, 3, unit.stride, "relu", depthwise=True, name="conv_dw")(x, train)
      x = _apply_gate(self.model_spec, unit, x, train, after_projection=False)
      x = block(unit.out_channels, 1, 1, "relu", name="conv_pw")(x, train)
    else:
      x = block(unit.mid_channels, 1, 1, unit.activation, name="conv1")(x, train)
      x = block(unit.mid_channels, unit.kernel_size, unit.stride, unit.activation,
                depthwise=True, name="conv2")(x, train)
      x = _apply_gate(self.model_spec, unit, x, train, after_projection=False)
      x = block(unit.out_channels, 1, 1, "none", name="conv3")(x, train)
    x = _apply_gate(self.model_spec, unit, x, train, after_projection=True)
    return x + identity if unit.residual else x


class Stage(nn.Module):
  """A named group of units (`stageS.unitU` upstream)."""
  model_spec: spec_lib.ModelSpec
  units: tuple[spec_lib.Unit, ...]
  dtype: Any = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for unit in self.units:
      x = Unit(self.model_spec, unit, self.dtype, self.depthwise_implementation,
               name=f"unit{unit.index}")(x, train)
    return x


class Backbone(nn.Module):
  """data_bn -> init_conv -> stages -> final conv(s) -> global average pool."""
  model_spec: spec_lib.ModelSpec
  dtype: Any = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    plan = self.model_spec.plan()
    x = BatchNorm(dtype=self.dtype, name="data_bn")(images, train)
    x = ConvBlock(plan.init_channels, 3, plan.init_stride, plan.init_activation,
                  dtype=self.dtype, name="init_conv")(x, train)
    for index, units in enumerate(plan.stages):
      x = Stage(self.model_spec, units, self.dtype, self.depthwise_implementation,
                name=f"stage{index + 1}")(x, train)
    if plan.final_name is not None:
      x = ConvBlock(plan.final_channels, 1, 1, plan.final_activation, dtype=self.dtype,
                    name=plan.final_name)(x, train)
      if plan.final_gate:
        x = build_gate(self.model_spec, name="final_attention")(x, train)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    if plan.head_channels is not None:
      x = ConvBlock(plan.head_channels, 1, 1, "hswish", use_bn=False, dtype=self.dtype,
                    name="final_conv2")(x, train)
    return x


class Classifier(nn.Module):
  """1x1 conv with bias on the pooled features (`classifier.conv` upstream)."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    logits = Conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                  kernel_init=xavier_normal, name="conv")(pooled)
    return logits.reshape(logits.shape[0], -1)


class MobileNet(nn.Module):
  """The network of `model_spec`; images NHWC in [0, 1], logits float32.

  `dtype` is the compute dtype (parameters, BatchNorm statistics and logits stay float32);
  `depthwise_implementation` changes speed and compile time, never the parameters.
  """
  model_spec: spec_lib.ModelSpec
  dtype: Any = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Expected NHWC images with 3 channels, got shape {images.shape}; "
                       "transpose NCHW (PyTorch) batches with x.transpose(0, 2, 3, 1).")
    pooled = Backbone(self.model_spec, self.dtype, self.depthwise_implementation,
                      name="backbone")(images.astype(self.dtype), train)
    logits = Classifier(self.model_spec.num_classes, self.dtype, name="classifier")(pooled)
    return logits.astype(jnp.float32)
