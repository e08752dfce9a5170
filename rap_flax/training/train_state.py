"""The model named by a config, and the train state (params, BatchNorm stats, optimizer)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax.sharding import NamedSharding

from rap_flax import models


class TrainState(train_state.TrainState):
  batch_stats: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def model_fields(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """What identifies the architecture; stored with checkpoints to refuse mismatched ones."""
  model = config.model
  return {"arch": model.arch, "num_classes": int(num_classes), "attention": model.attention,
          "pool_types": list(model.pool_types), "rates": [float(r) for r in model.rates],
          "width_multiplier": float(model.width_multiplier), "cifar": bool(model.cifar),
          "lightweight_head": bool(model.lightweight_head)}


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  fields = model_fields(config, num_classes)
  return models.create_model(fields.pop("arch"), dtype=config.model.dtype,
                             depthwise_implementation=config.model.depthwise_implementation,
                             **fields)


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, image_size: int, seed: int):
  def init() -> TrainState:
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init(jax.random.key(seed), dummy, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))
  return init


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_size: int,
                       seed: int, sharding: NamedSharding) -> TrainState:
  """Initialises the state directly with `sharding` (replicated: every device gets a copy)."""
  return jax.jit(_init_fn(model, tx, image_size, seed), out_shardings=sharding)()


def abstract_variables(model: nn.Module, image_size: int,
                       sharding: NamedSharding) -> dict[str, Any]:
  """Shapes, dtypes and shardings of {"params", "batch_stats"} (a restore target)."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      dict(shapes))


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation, image_size: int,
                         sharding: NamedSharding) -> TrainState:
  """Shapes, dtypes and shardings of the state, without computing it (a restore target)."""
  shapes = jax.eval_shape(_init_fn(model, tx, image_size, seed=0))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)
