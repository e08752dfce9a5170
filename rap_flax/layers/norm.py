"""BatchNorm with PyTorch semantics, so converted weights train and evaluate alike.

Differences from `flax.linen.BatchNorm` that matter for parity with the upstream code:
the running variance is updated with the *unbiased* batch variance (torch does this,
flax uses the biased one), and a `num_batches_tracked` counter is kept so that a
PyTorch state dict round-trips unchanged.

Statistics are reduced over every axis but the last. Under `jax.jit` with a batch
sharded over a device mesh that reduction spans the global batch, i.e. this behaves
like SyncBatchNorm and a multi-device step equals the single-device step.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from rap_flax import spec as spec_lib


def flax_momentum(torch_momentum: float) -> float:
  """PyTorch's BatchNorm momentum m (running = (1 - m) * running + m * batch) for Flax."""
  return 1.0 - torch_momentum


DEFAULT_MOMENTUM = flax_momentum(spec_lib.BN_MOMENTUM)


def _scale_shift(x, mean, var, scale, bias, epsilon):
  multiplier = scale * jax.lax.rsqrt(var + epsilon)
  shift = bias - mean * multiplier
  return (x * multiplier.astype(x.dtype) + shift.astype(x.dtype)).astype(x.dtype)


def _batch_moments(x, center):
  """Batch mean and biased variance over all axes but the last, from one pass over x.

  Both come from the sums of d = x - center and of d**2, which XLA fuses into the pass that
  produces x (on TPU and GPU the convolution writing it), where the two-pass variance
  E[(x - mean)**2] reads x once more: 9% of the bytes the TPU train step of
  MobileNetV3-large accesses (benchmarks/README.md). `center` is the running mean, so the
  subtraction E[d**2] - E[d]**2 cancels little even where |mean| >> std.
  """
  reduce_axes = tuple(range(x.ndim - 1))
  d = x.astype(jnp.float32) - center
  offset = jnp.mean(d, axis=reduce_axes)
  var = jnp.maximum(jnp.mean(jnp.square(d), axis=reduce_axes) - jnp.square(offset), 0.0)
  return center + offset, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def normalize_with_batch_statistics(x, scale, bias, center, epsilon):
  """(BatchNorm of x over all axes but the last, batch mean, biased batch variance).

  `center` (the running mean) only conditions the variance's arithmetic; it has no gradient.
  The backward pass is the closed form: dx = a * dy + b * x + c per channel, from the
  two sums of dy and dy * x. Autodiff of the forward pass gives the same numbers through
  about twice as many elementwise passes and kernels, which XLA then fuses into every
  consumer (the depthwise kernel-gradient taps read dx 9-25 times).
  """
  mean, var = _batch_moments(x, center)
  return _scale_shift(x, mean, var, scale, bias, epsilon), mean, var


def _normalize_forward(x, scale, bias, center, epsilon):
  mean, var = _batch_moments(x, center)
  return ((_scale_shift(x, mean, var, scale, bias, epsilon), mean, var),
          (x, scale, center, mean, var))


def _normalize_backward(epsilon, residuals, cotangents):
  x, scale, center, mean, var = residuals
  grad_y, grad_mean, grad_var = cotangents
  reduce_axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x32, grad_y32 = x.astype(jnp.float32), grad_y.astype(jnp.float32)
  grad_bias = jnp.sum(grad_y32, axis=reduce_axes)
  inv_std = jax.lax.rsqrt(var + epsilon)
  grad_scale = inv_std * (jnp.sum(grad_y32 * x32, axis=reduce_axes) - mean * grad_bias)
  # dx = a * dy + b * (x - mean) + d, with the batch mean's and variance's own cotangents.
  a = scale * inv_std
  b = (2 * grad_var - a * inv_std * grad_scale) / count
  d = (grad_mean - a * grad_bias) / count
  grad_x = a * grad_y32 + b * x32 + (d - b * mean)
  return grad_x.astype(x.dtype), grad_scale, grad_bias, jnp.zeros_like(center)


normalize_with_batch_statistics.defvjp(_normalize_forward, _normalize_backward)


class BatchNorm(nn.Module):
  momentum: float = DEFAULT_MOMENTUM
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    num_batches = self.variable("batch_stats", "num_batches_tracked",
                                lambda: jnp.zeros((), jnp.int32))
    x = x.astype(self.dtype)
    if not train:
      return _scale_shift(x, running_mean.value, running_var.value, scale, bias, self.epsilon)
    y, mean, var = normalize_with_batch_statistics(x, scale, bias, running_mean.value,
                                                   self.epsilon)
    if not self.is_initializing():
      count = x.size // features
      unbiased_var = var * (count / max(count - 1, 1))
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased_var
      num_batches.value = num_batches.value + 1
    return y
