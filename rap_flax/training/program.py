"""What a config trains, assembled once: model, optimizer, mesh, state and the jitted steps.

    program = program_lib.build(config, mesh, info)
    state = program.initial_state()                        # or program.abstract_state()
    state, metrics = program.train_step(state, batch)

train.py (through train_lib), `python -m rap_flax.aot` and the benchmarks all take their
steps from here, so the program compiled ahead of time for a TPU or benchmarked is the one
that trains. Every per-backend choice (the depthwise implementation, ...) follows the platform
of the mesh's devices, not the host's default backend: compiling for a TPU from a CPU host
builds the TPU program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from rap_flax import data
from rap_flax.data import padding
from rap_flax.models.mobilenet import MobileNet
from rap_flax.training import config_lib, evaluate, metrics, optim, parallel
from rap_flax.training import train_state as train_state_lib
from rap_flax.training.train_state import TrainState

TrainStep = Callable[[TrainState, Any], tuple[TrainState, metrics.Metrics]]


def make_train_step(model, label_smoothing: float, mesh: Mesh,
                    model_input=data.model_input()) -> TrainStep:
  """Forward, backward and SGD update on one global batch; the old state is donated."""

  def train_step(state: TrainState, batch) -> tuple[TrainState, metrics.Metrics]:
    mask = batch["mask"].astype(jnp.float32)

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                    model_input(batch["image"]), train=True,
                                    mutable=["batch_stats"])
      outputs = metrics.per_example_outputs(logits, batch["label"], label_smoothing)
      loss = jnp.sum(outputs["loss"] * mask) / jnp.maximum(jnp.sum(mask), 1.0)
      return loss, (outputs, updates["batch_stats"])

    (_, (outputs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, metrics.Metrics.single_from_model_output(mask=batch["mask"], **outputs)

  replicated = parallel.replicated_sharding(mesh)
  return jax.jit(train_step, in_shardings=(replicated, parallel.data_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """The model of a config on `mesh`, its optimizer and schedule, and the two steps."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  model: MobileNet
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  image_size: int
  steps_per_epoch: int
  num_train_steps: int
  train_step: TrainStep
  eval_step: evaluate.EvalStep

  @property
  def platform(self) -> str:
    return mesh_platform(self.mesh)

  @property
  def replicated(self):
    return parallel.replicated_sharding(self.mesh)

  def initial_state(self) -> TrainState:
    """A freshly initialised state (config.seed), replicated over the mesh."""
    return train_state_lib.create_train_state(self.model, self.tx, self.image_size,
                                              self.config.seed, self.replicated)

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the state (a restore target, or to compile against)."""
    return train_state_lib.abstract_train_state(self.model, self.tx, self.image_size,
                                                self.replicated)

  def abstract_batch(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of `batch_size` as the input pipeline delivers it, sharded over the mesh."""
    sharding = parallel.data_sharding(self.mesh)
    shapes = {**padding.example_shapes(self.image_size, data.image_dtype(self.config.data)),
              "mask": ((), jnp.bool_)}
    return {name: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
            for name, (shape, dtype) in shapes.items()}


def mesh_platform(mesh: Mesh) -> str:
  """The platform ("cpu", "gpu", "tpu") of the mesh's devices, which must share one."""
  platforms = {device.platform for device in mesh.devices.flat}
  if len(platforms) != 1:
    raise ValueError(f"A mesh spans devices of one platform; this one has {sorted(platforms)}.")
  return platforms.pop()


def build(config: ml_collections.ConfigDict, mesh: Mesh, info) -> TrainProgram:
  """The program of `config` on `mesh` for a dataset described by `info` (a DatasetInfo)."""
  model = config_lib.model_for_dataset(config, info, platform=mesh_platform(mesh))
  steps_per_epoch = info.num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {info.num_train} training "
                     f"examples of {info.name!r}; lower --config.batch_size.")
  num_train_steps = (config.num_train_steps if config.num_train_steps > 0
                     else math.ceil(config.num_epochs * steps_per_epoch))
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch, num_train_steps)
  return TrainProgram(
      config=config, mesh=mesh, model=model,
      tx=optim.create_optimizer(config, learning_rate_fn), learning_rate_fn=learning_rate_fn,
      image_size=info.image_size, steps_per_epoch=steps_per_epoch,
      num_train_steps=num_train_steps,
      train_step=make_train_step(model, config.label_smoothing, mesh,
                                 data.model_input(config.data)),
      eval_step=evaluate.make_eval_step(model, mesh, data.model_input(config.data)))
