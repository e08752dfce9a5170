"""Convolution + BatchNorm + activation blocks with the upstream (PyTorch) padding."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rap_flax.layers.activations import get_activation
from rap_flax.layers.depthwise import DepthwiseConv
from rap_flax.layers.norm import BatchNorm

# kaiming_uniform_(fan_in, gain sqrt(2)): limit sqrt(6 / fan_in), as the upstream init.
kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's `padding=k//2` on every side; flax 'SAME' differs at stride 2."""
  pad = kernel_size // 2
  return ((pad, pad), (pad, pad))


class Conv(nn.Module):
  """Dense 2-D convolution (NHWC, HWIO kernel) with PyTorch's symmetric padding.

  The parameters are those of `flax.linen.Conv` ("kernel" (k, k, in, out), "bias"), so
  checkpoints do not depend on how the product is computed. A 1x1 stride-1 convolution
  is computed as a matrix product over the channels: XLA:CPU runs a convolution's
  filter gradient as a convolution with an image-sized window after transposing the
  activations, which took 2-8x the time of the equivalent matrix products in the
  MobileNetV3-large training step (profile in benchmarks/README.md).
  """
  features: int
  kernel_size: int
  strides: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = kaiming_uniform

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    if k == 1 and self.strides == 1:
      # On the 2-D view: the filter gradient then contracts one dimension, which XLA:CPU
      # runs without transposing the activations (1.9x faster forward + backward at
      # 32x112x112, 16 -> 64 than a dot over the 4-D array).
      y = (x.reshape(-1, x.shape[-1]) @ kernel[0, 0]).reshape(*x.shape[:-1], self.features)
    else:
      y = lax.conv_general_dilated(x, kernel, (self.strides, self.strides),
                                   symmetric_padding(k),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


class ConvBlock(nn.Module):
  """conv (no bias) -> BatchNorm -> activation; depthwise when `depthwise`."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  activation: str = "relu"
  depthwise: bool = False
  use_bn: bool = True
  dtype: jnp.dtype = jnp.float32
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.depthwise:
      if self.features != x.shape[-1]:
        raise ValueError(f"A depthwise ConvBlock keeps the channel count; got "
                         f"{x.shape[-1]} in, {self.features} out.")
      x = DepthwiseConv(self.kernel_size, self.strides, dtype=self.dtype,
                        implementation=self.depthwise_implementation, name="conv")(x)
    else:
      x = Conv(self.features, self.kernel_size, self.strides, dtype=self.dtype,
               name="conv")(x)
    if self.use_bn:
      x = BatchNorm(dtype=self.dtype, name="bn")(x, train)
    return get_activation(self.activation)(x)
