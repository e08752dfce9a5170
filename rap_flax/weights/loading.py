"""Deciding what of a source a model takes: exactly its variables (loading, converting,
evaluating) or those that fit (fine-tuning)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np

from rap_flax import files, models
from rap_flax import spec as spec_lib
from rap_flax.weights import keys
from rap_flax.weights.formats import Source, WeightsSource, open_source


class CheckpointMismatchError(ValueError):
  """The source does not hold exactly the weights of the requested model."""


def _describe(model_spec: spec_lib.ModelSpec) -> str:
  return ", ".join(f"{k}={v}" for k, v in model_spec.to_dict().items())


def _listing(title: str, names: list[str], limit: int = 12) -> str:
  if not names:
    return ""
  more = f"\n    ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"  {title} ({len(names)}):\n    " + "\n    ".join(names[:limit]) + more


def load_variables(source: WeightsSource, model: spec_lib.ModelLike | None = None,
                   checkpoint: str = "best") -> dict[str, Any]:
  """{"params", "batch_stats"} of `model` from `source`, exactly, as numpy arrays.

  `source` is a training workdir (its checkpoint "best", "latest" or a step number; a
  damaged step is skipped for the newest readable one, with a warning) or a step directory
  inside it, a directory written by `python -m rap_flax.convert to-flax`, an upstream
  PyTorch checkpoint (.pth/.pt, any upstream format, never unpickling code), a .safetensors
  file with the upstream keys, or an upstream state dict in memory. `model` is a ModelSpec
  or a model of either framework; workdirs and converter directories record theirs, so for
  them it may be left out. Anything missing, extra or mis-shaped is an error that lists it.
  """
  return exact_variables(open_source(source, model, checkpoint))


def load_model(source: WeightsSource, checkpoint: str = "best", dtype="float32",
               depthwise_implementation: str = "auto") -> tuple[Any, dict[str, Any]]:
  """(model, variables) of a source that records its model: a training workdir (its
  checkpoint "best", "latest" or a step number) or a directory written by `to-flax`.

      model, variables = rap_flax.load_model("/tmp/rap_flax_digits")
      logits = model.apply(variables, images_nhwc, train=False)

  `dtype` and `depthwise_implementation` are those of `rap_flax.create_model` (compute only;
  the weights are the same). A .pth or .safetensors file does not record its model: build it
  with `create_model` and use `load_variables(source, model)`.
  """
  if isinstance(source, Mapping) or os.path.isfile(files.expand(os.fspath(source))):
    raise ValueError(f"{'The state dict' if isinstance(source, Mapping) else source} does not "
                     "record its model: build it with rap_flax.create_model(...) and call "
                     "rap_flax.load_variables(source, model).")
  opened = open_source(source, None, checkpoint)
  model = models.create_model(opened.model_spec, dtype=dtype,
                              depthwise_implementation=depthwise_implementation)
  return model, exact_variables(opened)


def exact_variables(opened: Source) -> dict[str, Any]:
  """The variables of an opened source, which must hold exactly those of its model."""
  shapes, found = opened.shapes, opened.found
  missing = [opened.name(key) for key in shapes if key not in found]
  mismatched = [f"{opened.name(key)}: source {found[key].shape}, model {shapes[key].shape}"
                for key in shapes if key in found and found[key].shape != shapes[key].shape]
  if missing or mismatched or opened.unused:
    raise CheckpointMismatchError(
        f"{opened.description} does not hold the weights of the requested model "
        f"({_describe(opened.model_spec)}). Describe the model it was trained as.\n" + "\n".join(
            s for s in (_listing("missing", missing), _listing("unexpected", opened.unused),
                        _listing("shape mismatches", mismatched)) if s))
  return keys.unflatten({key: np.asarray(value, dtype=shapes[key].dtype)
                         for key, value in found.items()})


@dataclasses.dataclass
class Matched:
  """A source matched leniently to a model (fine-tuning)."""
  variables: keys.FlatVariables  # the variables taken from the source
  reinitialised: list[str]  # model variables left at their initial value, with the reason
  unused: list[str]


def match_variables(source: WeightsSource, model: spec_lib.ModelLike, checkpoint: str = "best",
                    exclude: str | None = None) -> Matched:
  """The variables of `source` that fit `model`: same name and shape, not matching the
  regex `exclude` (on "params/backbone/.../kernel"). Others keep their initial values; a
  model variable that the source lacks entirely is an error, unless excluded."""
  opened = open_source(source, model, checkpoint)
  pattern = re.compile(exclude) if exclude else None
  taken, reinitialised, missing = {}, [], []
  for key, shape in opened.shapes.items():
    name = keys.flax_name(key)
    if pattern is not None and pattern.search(name):
      reinitialised.append(f"{name} (excluded by init_from_exclude)")
    elif key not in opened.found:
      missing.append(name)
    elif opened.found[key].shape != shape.shape:
      reinitialised.append(f"{name} (source {opened.found[key].shape}, model {shape.shape})")
    else:
      taken[key] = np.asarray(opened.found[key], dtype=shape.dtype)
  if missing:
    raise CheckpointMismatchError(
        f"{opened.description} lacks weights of this model; it was trained as another "
        "architecture or gate, or add them to config.init_from_exclude.\n"
        + _listing("missing", missing))
  return Matched(taken, reinitialised, opened.unused)
