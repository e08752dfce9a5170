"""BatchNorm with PyTorch semantics, so converted weights train and evaluate alike.

Differences from `flax.linen.BatchNorm` that matter for parity with the upstream code:
the running variance is updated with the *unbiased* batch variance (torch does this,
flax uses the biased one), and a `num_batches_tracked` counter is kept so that a
PyTorch state dict round-trips unchanged.

Statistics are reduced over every axis but the last. Under `jax.jit` with a batch
sharded over a device mesh that reduction spans the global batch, i.e. this behaves
like SyncBatchNorm and a multi-device step equals the single-device step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's default BatchNorm momentum 0.1 is 0.9 in the flax convention
# (running = momentum * running + (1 - momentum) * batch).
DEFAULT_MOMENTUM = 0.9


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
    if train:
      reduce_axes = tuple(range(x.ndim - 1))
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axis=reduce_axes)
      # Two-pass variance: E[x^2] - E[x]^2 loses the digits parity needs.
      var = jnp.mean(jnp.square(x32 - mean), axis=reduce_axes)
      if not self.is_initializing():
        count = x.size // features
        unbiased_var = var * (count / max(count - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased_var
        num_batches.value = num_batches.value + 1
    else:
      mean, var = running_mean.value, running_var.value
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    shift = bias - mean * multiplier
    return (x * multiplier.astype(self.dtype) + shift.astype(self.dtype)).astype(self.dtype)
