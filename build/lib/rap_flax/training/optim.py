"""SGD as torch.optim.SGD does it, and the learning-rate schedules of the upstream recipes.

torch.optim.SGD(lr, momentum, weight_decay, nesterov) updates
    d = g + weight_decay * p;  buf = momentum * buf + d  (buf = d at the first step);
    p -= lr * (d + momentum * buf if nesterov else buf)
for every parameter (BatchNorm scales and biases included). optax's add_decayed_weights
followed by sgd (trace with zero initial state, then the learning rate) is the same update.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def create_learning_rate_fn(config: ml_collections.ConfigDict, steps_per_epoch: int,
                            num_train_steps: int) -> optax.Schedule:
  """Learning rate as a function of the number of updates already applied.

  Epoch-based milestones change the rate at epoch boundaries, as torch's per-epoch
  schedulers do. Warmup multiplies the schedule by a ramp from 0 to 1 over warmup_epochs
  (for cosine, the decay starts after the warmup).
  """
  base = config.learning_rate
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base, warmup_steps=warmup_steps,
        decay_steps=max(num_train_steps, warmup_steps + 1))
  if config.lr_schedule == "constant":
    schedule = optax.constant_schedule(base)
  elif config.lr_schedule == "multistep":
    scales: dict[int, float] = {}
    for milestone in config.lr_milestones:
      boundary = int(round(milestone * steps_per_epoch))
      scales[boundary] = scales.get(boundary, 1.0) * config.lr_decay_factor
    schedule = optax.piecewise_constant_schedule(base, scales)
  elif config.lr_schedule == "step":
    schedule = optax.exponential_decay(
        base, transition_steps=int(round(config.lr_step_epochs * steps_per_epoch)),
        decay_rate=config.lr_decay_factor, staircase=True)
  else:
    raise ValueError(f"Unknown lr_schedule {config.lr_schedule!r}.")
  if warmup_steps == 0:
    return schedule
  return lambda step: schedule(step) * jnp.minimum(1.0, step / warmup_steps)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum and weight decay coupled into the gradient of every parameter."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate_fn, momentum=config.momentum or None,
                nesterov=config.nesterov))
