"""What a model's variables look like, without computing them: the template every source is
read against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rap_flax import models
from rap_flax import spec as spec_lib
from rap_flax.weights import keys


def template_image_size(model_spec: spec_lib.ModelSpec) -> int:
  """An input size at which every layer of the model has a valid shape."""
  return 32 if model_spec.cifar else 224


def variable_shapes(model: spec_lib.ModelLike) -> dict[str, dict]:
  """Shapes and dtypes of {"params", "batch_stats"} (jax.ShapeDtypeStruct leaves)."""
  model_spec = spec_lib.model_spec_of(model)
  size = template_image_size(model_spec)
  flax_model = models.create_model(model_spec, depthwise_implementation="grouped")
  return jax.eval_shape(
      lambda: flax_model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def flat_shapes(model_spec: spec_lib.ModelSpec) -> keys.FlatVariables:
  return keys.flatten(variable_shapes(model_spec))
