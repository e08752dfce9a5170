"""Convolution + BatchNorm + activation blocks with the upstream (PyTorch) padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_flax.layers.activations import get_activation
from rap_flax.layers.depthwise import DepthwiseConv
from rap_flax.layers.norm import BatchNorm

# kaiming_uniform_(fan_in, gain sqrt(2)): limit sqrt(6 / fan_in), as the upstream init.
kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


def symmetric_padding(kernel_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch's `padding=k//2` on every side; flax 'SAME' differs at stride 2."""
  pad = kernel_size // 2
  return ((pad, pad), (pad, pad))


def conv2d(features: int, kernel_size: int, strides: int = 1, use_bias: bool = False,
           dtype: jnp.dtype = jnp.float32, name: str | None = None,
           kernel_init=kaiming_uniform) -> nn.Conv:
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=symmetric_padding(kernel_size), use_bias=use_bias,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                 bias_init=nn.initializers.zeros, name=name)


class ConvBlock(nn.Module):
  """conv (no bias) -> BatchNorm -> activation; depthwise when `depthwise`."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  activation: str = "relu"
  depthwise: bool = False
  use_bn: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.depthwise:
      if self.features != x.shape[-1]:
        raise ValueError(f"A depthwise ConvBlock keeps the channel count; got "
                         f"{x.shape[-1]} in, {self.features} out.")
      x = DepthwiseConv(self.kernel_size, self.strides, dtype=self.dtype, name="conv")(x)
    else:
      x = conv2d(self.features, self.kernel_size, self.strides, dtype=self.dtype,
                 name="conv")(x)
    if self.use_bn:
      x = BatchNorm(dtype=self.dtype, name="bn")(x, train)
    return get_activation(self.activation)(x)
