"""MobileNetV1 / V2 / V3 backbones with an attention gate in every (flagged) unit.

Module names mirror the upstream PyTorch modules (backbone.stageS.unitU.conv1, ...)
so that weight conversion is a path-by-path mapping.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_flax.layers.attention import AttentionConfig
from rap_flax.layers.conv import Conv, ConvBlock
from rap_flax.layers.norm import BatchNorm

xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """The tables that define one backbone (SPEC §3); per-stage lists of per-unit values."""
  family: str  # "v1" (separable units) or "v2v3" (inverted residual units)
  init_channels: int
  init_activation: str
  channels: tuple[tuple[int, ...], ...]
  strides: tuple[int, ...]
  cifar_strides: tuple[int, ...]
  activations: tuple[str, ...]
  mids: tuple[tuple[int, ...], ...] | None = None
  kernels: tuple[int, ...] | None = None
  # Per unit: 1 where the unit has a gate. None: every unit has one.
  attention_flags: tuple[tuple[int, ...], ...] | None = None
  # 1x1 conv + BN after the stages (V2: 1280, V3: 960/576); scaled only when w > 1.
  final_channels: int | None = None
  final_activation: str = "relu6"
  # V3 heavy head: 1x1 conv (no BN, no bias) + hswish after the pool; never scaled.
  head_channels: int | None = None
  # V3-small: a gate on the final conv's output.
  final_attention: bool = False


ARCHS: dict[str, ArchSpec] = {
    "mobilenetv1": ArchSpec(
        family="v1", init_channels=32, init_activation="relu",
        channels=((64,), (128, 128), (256, 256), (512,) * 6, (1024, 1024)),
        strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2),
        activations=("relu",) * 5),
    "mobilenetv2": ArchSpec(
        family="v2v3", init_channels=32, init_activation="relu6",
        channels=((16,), (24, 24), (32, 32, 32), (64, 64, 64, 64, 96, 96, 96),
                  (160, 160, 160, 320)),
        mids=((32,), (96, 144), (144, 192, 192), (192, 384, 384, 384, 384, 576, 576),
              (576, 960, 960, 960)),
        strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2),
        kernels=(3,) * 5, activations=("relu6",) * 5,
        final_channels=1280, final_activation="relu6"),
    "mobilenetv3_large": ArchSpec(
        family="v2v3", init_channels=16, init_activation="hswish",
        channels=((16,), (24, 24), (40, 40, 40), (80, 80, 80, 80, 112, 112), (160, 160, 160)),
        mids=((16,), (64, 72), (72, 120, 120), (240, 200, 184, 184, 480, 672),
              (672, 960, 960)),
        strides=(1, 2, 2, 2, 2), cifar_strides=(1, 1, 2, 2, 2),
        kernels=(3, 3, 5, 3, 5), activations=("relu", "relu", "relu", "hswish", "hswish"),
        attention_flags=((0,), (0, 0), (1, 1, 1), (0, 0, 0, 0, 1, 1), (1, 1, 1)),
        final_channels=960, final_activation="hswish", head_channels=1280),
    "mobilenetv3_small": ArchSpec(
        family="v2v3", init_channels=16, init_activation="hswish",
        channels=((16,), (24, 24), (40, 40, 40, 48, 48), (96, 96, 96)),
        mids=((16,), (72, 88), (96, 240, 240, 120, 144), (288, 576, 576)),
        strides=(2, 2, 2, 2), cifar_strides=(1, 2, 2, 2),
        kernels=(3, 3, 5, 5), activations=("relu", "relu", "hswish", "hswish"),
        attention_flags=((1,), (0, 0), (1, 1, 1, 1, 1), (1, 1, 1)),
        final_channels=576, final_activation="hswish", head_channels=1024,
        final_attention=True),
}


class SeparableUnit(nn.Module):
  """MobileNetV1 unit: depthwise 3x3 -> [gate] -> pointwise 1x1 (+ identity)."""
  out_channels: int
  strides: int
  attention: AttentionConfig | None
  dtype: jnp.dtype = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    identity = x
    x = ConvBlock(x.shape[-1], 3, self.strides, "relu", depthwise=True, dtype=self.dtype,
                  depthwise_implementation=self.depthwise_implementation,
                  name="conv_dw")(x, train)
    x = _gate(self.attention, x, train, after_projection=False)
    x = ConvBlock(self.out_channels, 1, 1, "relu", dtype=self.dtype, name="conv_pw")(x, train)
    x = _gate(self.attention, x, train, after_projection=True)
    return _residual(identity, x, self.strides)


class InvertedResidualUnit(nn.Module):
  """MobileNetV2/V3 unit: 1x1 expand -> depthwise kxk -> [gate] -> 1x1 project (+ identity)."""
  mid_channels: int
  out_channels: int
  kernel_size: int
  strides: int
  activation: str
  attention: AttentionConfig | None
  dtype: jnp.dtype = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    identity = x
    block = functools.partial(ConvBlock, dtype=self.dtype)
    x = block(self.mid_channels, 1, 1, self.activation, name="conv1")(x, train)
    x = block(self.mid_channels, self.kernel_size, self.strides, self.activation,
              depthwise=True, depthwise_implementation=self.depthwise_implementation,
              name="conv2")(x, train)
    x = _gate(self.attention, x, train, after_projection=False)
    x = block(self.out_channels, 1, 1, "none", name="conv3")(x, train)
    x = _gate(self.attention, x, train, after_projection=True)
    return _residual(identity, x, self.strides)


def _gate(attention: AttentionConfig | None, x: jax.Array, train: bool,
          after_projection: bool) -> jax.Array:
  if attention is None or attention.after_projection != after_projection:
    return x
  gate = attention.build(name="attention")
  return x if gate is None else gate(x, train)


def _residual(identity: jax.Array, x: jax.Array, strides: int) -> jax.Array:
  return x + identity if strides == 1 and identity.shape[-1] == x.shape[-1] else x


class Stage(nn.Module):
  """A named group of units (`stageS.unitU` upstream)."""
  units: Sequence[Callable[..., nn.Module]]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for index, make_unit in enumerate(self.units):
      x = make_unit(name=f"unit{index + 1}")(x, train)
    return x


class Backbone(nn.Module):
  """data_bn -> init_conv -> stages -> final conv(s) -> global average pool."""
  spec: ArchSpec
  attention: AttentionConfig
  width_multiplier: float = 1.0
  cifar: bool = False
  lightweight_head: bool = False
  dtype: jnp.dtype = jnp.float32
  depthwise_implementation: str = "auto"

  def scaled(self, channels: int) -> int:
    return int(channels * self.width_multiplier)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    spec = self.spec
    x = BatchNorm(dtype=self.dtype, name="data_bn")(images.astype(self.dtype), train)
    x = ConvBlock(self.scaled(spec.init_channels), 3, 1 if self.cifar else 2,
                  spec.init_activation, dtype=self.dtype, name="init_conv")(x, train)
    strides = spec.cifar_strides if self.cifar else spec.strides
    for stage_index, stage_channels in enumerate(spec.channels):
      units = []
      for unit_index, out_channels in enumerate(stage_channels):
        unit_strides = strides[stage_index] if unit_index == 0 else 1
        gated = spec.attention_flags is None or spec.attention_flags[stage_index][unit_index]
        attention = self.attention if gated else None
        if spec.family == "v1":
          units.append(functools.partial(
              SeparableUnit, self.scaled(out_channels), unit_strides, attention, self.dtype,
              self.depthwise_implementation))
        else:
          units.append(functools.partial(
              InvertedResidualUnit, self.scaled(spec.mids[stage_index][unit_index]),
              self.scaled(out_channels), spec.kernels[stage_index], unit_strides,
              spec.activations[stage_index], attention, self.dtype,
              self.depthwise_implementation))
      x = Stage(tuple(units), name=f"stage{stage_index + 1}")(x, train)
    if spec.final_channels is not None:
      final_channels = (self.scaled(spec.final_channels) if self.width_multiplier > 1
                        else spec.final_channels)
      final_name = "final_conv" if spec.head_channels is None else "final_conv1"
      x = ConvBlock(final_channels, 1, 1, spec.final_activation, dtype=self.dtype,
                    name=final_name)(x, train)
      if spec.final_attention:
        gate = self.attention.build(name="final_attention")
        x = x if gate is None else gate(x, train)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    if spec.head_channels is not None and not self.lightweight_head:
      x = ConvBlock(spec.head_channels, 1, 1, "hswish", use_bn=False, dtype=self.dtype,
                    name="final_conv2")(x, train)
    return x


class Classifier(nn.Module):
  """1x1 conv with bias on the pooled features (`classifier.conv` upstream)."""
  num_classes: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, pooled: jax.Array) -> jax.Array:
    logits = Conv(self.num_classes, 1, use_bias=True, dtype=self.dtype,
                  kernel_init=xavier_normal, name="conv")(pooled)
    return logits.reshape(logits.shape[0], -1)


class MobileNet(nn.Module):
  """Any MobileNet of `ARCHS` with any gate; images NHWC in [0, 1], logits float32."""
  arch: str
  num_classes: int
  attention: AttentionConfig = AttentionConfig()
  width_multiplier: float = 1.0
  cifar: bool = False
  lightweight_head: bool = False
  dtype: jnp.dtype = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"Expected NHWC images with 3 channels, got shape {images.shape}; "
                       "transpose NCHW (PyTorch) batches with x.transpose(0, 2, 3, 1).")
    pooled = Backbone(ARCHS[self.arch], self.attention, self.width_multiplier, self.cifar,
                      self.lightweight_head, self.dtype, self.depthwise_implementation,
                      name="backbone")(images, train)
    return Classifier(self.num_classes, self.dtype, name="classifier")(pooled).astype(jnp.float32)
