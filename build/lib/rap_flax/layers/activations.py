"""Activation functions used by the MobileNet backbones and the gates."""

from typing import Callable

import jax
import jax.numpy as jnp


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0.0, 6.0)


def hsigmoid(x: jax.Array) -> jax.Array:
  """Hard sigmoid of MobileNetV3: relu6(x + 3) / 6."""
  return relu6(x + 3.0) / 6.0


def hswish(x: jax.Array) -> jax.Array:
  """Hard swish of MobileNetV3: x * relu6(x + 3) / 6."""
  return x * hsigmoid(x)


def identity(x: jax.Array) -> jax.Array:
  return x


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": relu6,
    "hswish": hswish,
    "hsigmoid": hsigmoid,
    "none": identity,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.") from None
