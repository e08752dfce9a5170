"""The one place that builds any model: `create_model(...)`, or `from_config(config)`."""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from rap_flax import spec as spec_lib
from rap_flax.layers import depthwise
from rap_flax.models.mobilenet import MobileNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def list_models() -> list[str]:
  """Architecture names accepted by `create_model`."""
  return sorted(spec_lib.ARCHS)


def list_attentions() -> list[str]:
  """Attention names accepted by `create_model`."""
  return list(spec_lib.GATES)


def create_model(arch: str | spec_lib.ModelSpec, num_classes: int | None = None,
                 attention: str = "srap", pool_types: Sequence[str] = ("avg", "std"),
                 rates: Sequence[float] | None = (0.5, 0.5), width_multiplier: float = 1.0,
                 cifar: bool = False, lightweight_head: bool = False, dtype="float32",
                 depthwise_implementation: str = "auto",
                 platform: str | None = None) -> MobileNet:
  """Builds `arch` (a name, or a whole `rap_flax.spec.ModelSpec`) with gate `attention`.

  `pool_types`/`rates` configure srap/mrap; mafc uses `pool_types` and ignores `rates`;
  none/se/cbam ignore both. `lightweight_head` drops MobileNetV3's 1280/1024 head conv.
  `dtype` is the compute dtype (parameters stay float32). `depthwise_implementation` picks
  how the depthwise convolutions run ("auto": the fastest measured on the backend; see
  `rap_flax.layers.depthwise`): speed and compile time only, never the parameters.
  `platform` ("cpu", "gpu", "tpu") is the backend the model will be compiled for, which
  resolves "auto"; None leaves that to jax's default backend when the model runs.
  """
  if isinstance(arch, spec_lib.ModelSpec):
    model_spec = arch
  else:
    model_spec = spec_lib.ModelSpec(arch, num_classes, attention, tuple(pool_types),
                                    None if rates is None else tuple(rates),
                                    width_multiplier, cifar, lightweight_head)
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}.")
    dtype = DTYPES[dtype]
  resolved = depthwise.resolve_implementation(depthwise_implementation, platform)
  return MobileNet(model_spec, dtype, resolved if platform else depthwise_implementation)


def spec_from_config(config, num_classes: int | None = None) -> spec_lib.ModelSpec:
  """The ModelSpec of a training config's `config.model`. `num_classes` (the dataset's,
  e.g. `rap_flax.data.num_classes(config.data)`) is used where config.model.num_classes is
  unset."""
  model = config.model
  if model.num_classes is not None:
    num_classes = model.num_classes
  if num_classes is None:
    raise ValueError("config.model.num_classes is unset: set it, or pass the dataset's "
                     "(num_classes=rap_flax.data.num_classes(config.data)).")
  return spec_lib.ModelSpec(model.arch, num_classes, model.attention, tuple(model.pool_types),
                            None if model.rates is None else tuple(model.rates),
                            model.width_multiplier, model.cifar, model.lightweight_head)


def from_config(config, num_classes: int | None = None,
                platform: str | None = None) -> MobileNet:
  """The model a training config describes: what train.py, eval.py, the converter, the
  exporter and the notebook build. `num_classes`: as for `spec_from_config`; `platform`:
  as for `create_model`."""
  return create_model(spec_from_config(config, num_classes), dtype=config.model.dtype,
                      depthwise_implementation=config.model.depthwise_implementation,
                      platform=platform)
