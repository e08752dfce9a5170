"""The one place that builds any model: `create_model(arch, ..., attention=...)`."""

from typing import Sequence

import jax.numpy as jnp

from rap_flax.layers import depthwise
from rap_flax.layers.attention import ATTENTIONS, AttentionConfig
from rap_flax.models.mobilenet import ARCHS, MobileNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def list_models() -> list[str]:
  """Architecture names accepted by `create_model`."""
  return sorted(ARCHS)


def list_attentions() -> list[str]:
  """Attention names accepted by `create_model`."""
  return list(ATTENTIONS)


def create_model(arch: str, num_classes: int, attention: str = "srap",
                 pool_types: Sequence[str] = ("avg", "std"),
                 rates: Sequence[float] | None = (0.5, 0.5),
                 width_multiplier: float = 1.0, cifar: bool = False,
                 lightweight_head: bool = False, dtype="float32",
                 depthwise_implementation: str = "auto") -> MobileNet:
  """Builds `arch` with gate `attention`; `dtype` is the compute dtype (params stay float32).

  `depthwise_implementation` picks how the depthwise convolutions run ("auto": the
  fastest measured on the backend; see `rap_flax.layers.depthwise`); it changes speed
  and compile time, never the parameters.

  `pool_types`/`rates` configure srap/mrap; mafc uses `pool_types` and ignores `rates`;
  none/se/cbam ignore both. `lightweight_head` drops MobileNetV3's 1280/1024 head conv.
  """
  if arch not in ARCHS:
    raise ValueError(f"Unknown arch {arch!r}; choose one of {list_models()}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
  if not width_multiplier > 0:
    raise ValueError(f"width_multiplier must be > 0, got {width_multiplier!r}.")
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}.")
    dtype = DTYPES[dtype]
  attention_config = AttentionConfig(
      attention, tuple(pool_types), None if attention == "mafc" or rates is None
      else tuple(rates))
  depthwise.resolve_implementation(depthwise_implementation)  # fails early when unknown
  return MobileNet(arch, num_classes, attention_config, float(width_multiplier),
                   bool(cifar), bool(lightweight_head), dtype, depthwise_implementation)
