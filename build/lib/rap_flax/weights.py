"""Weights in and out: one loader for every source, and the upstream (PyTorch) key mapping.

    variables = rap_flax.load_variables(source, model, checkpoint="best")

`source` is any of
  - a training workdir (its `checkpoints/`: "best", "latest" or a step number; a damaged
    step is skipped for the newest readable one, with a warning), or a step directory
    inside it (`WORKDIR/checkpoints/330`);
  - an orbax directory written by `python -m rap_flax.convert to-flax`;
  - an upstream PyTorch checkpoint (`.pth`/`.pt`, any upstream format, never unpickling
    code) or a `.safetensors` file with the upstream keys.
`model` is a Flax model, a `rap_flax.spec.ModelSpec` or a training config; it may be left
out for a workdir or a converter directory, which record the model they hold. The result is
{"params", "batch_stats"} as numpy arrays, exactly the model's variables: anything missing,
extra or mis-shaped is an error that lists it. `match_variables` is the lenient form used
for fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rap_flax import files
from rap_flax import spec as spec_lib

COLLECTIONS = ("params", "batch_stats")
PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
STAT_LEAVES = {"mean": "running_mean", "var": "running_var",
               "num_batches_tracked": "num_batches_tracked"}
GATE_SCOPES = ("attention", "final_attention")
MODEL_METADATA_FILE = "rap_flax_model.json"  # beside a converter directory's orbax files

FlatVariables = dict[tuple[str, tuple[str, ...]], np.ndarray]


class CheckpointMismatchError(ValueError):
  """The source does not hold exactly the weights of the requested model."""


# ----------------------------------------------------------------------------- model


def model_spec_of(model) -> spec_lib.ModelSpec:
  """The ModelSpec of a Flax model, a ModelSpec, or a training config."""
  if isinstance(model, spec_lib.ModelSpec):
    return model
  if hasattr(model, "model_spec"):
    return model.model_spec
  if hasattr(model, "model") and hasattr(model, "data"):
    from rap_flax import models  # pylint: disable=g-import-not-at-top
    return models.spec_from_config(model)
  raise TypeError(f"Expected a model, a ModelSpec or a config, got {type(model).__name__}.")


def template_image_size(model_spec: spec_lib.ModelSpec) -> int:
  """An input size at which every layer of the model has a valid shape."""
  return 32 if model_spec.cifar else 224


def variable_shapes(model) -> dict[str, Any]:
  """Shapes and dtypes of {"params", "batch_stats"}, without computing anything."""
  from rap_flax import models  # pylint: disable=g-import-not-at-top
  model_spec = model_spec_of(model)
  size = template_image_size(model_spec)
  flax_model = models.create_model(model_spec, depthwise_implementation="grouped")
  return jax.eval_shape(
      lambda: flax_model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def flatten(variables: Mapping[str, Any]) -> FlatVariables:
  flat = {}
  for collection in COLLECTIONS:
    for path, leaf in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(variables.get(collection, {}))).items():
      flat[collection, path] = leaf
  return flat


def unflatten(flat: FlatVariables) -> dict[str, Any]:
  return {collection: flax.traverse_util.unflatten_dict(
      {path: value for (c, path), value in flat.items() if c == collection})
      for collection in COLLECTIONS}


# ----------------------------------------------------------------------------- upstream keys


def torch_key(collection: str, path: tuple[str, ...], gate: spec_lib.Gate) -> str:
  """The upstream state-dict key of one Flax variable."""
  parts: list[str] = []
  modules, leaf = path[:-1], path[-1]
  in_gate = False
  for name in modules:
    if in_gate:
      parts.append(gate.children[name])
    elif name in GATE_SCOPES:
      in_gate = True
      parts.extend([gate.upstream_name] if name == "attention" else [name, gate.upstream_name])
    else:
      parts.append(name)
  leaves = PARAM_LEAVES if collection == "params" else STAT_LEAVES
  return ".".join(parts + [leaves[leaf]])


def _to_torch_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:  # conv (kh, kw, in, out) -> (out, in, kh, kw)
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 2:  # dense (in, out) -> (out, in)
    return array.T
  return array


def _to_flax_layout(array: np.ndarray) -> np.ndarray:
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return array.T
  return array


def to_state_dict(variables: Mapping[str, Any], model) -> dict[str, np.ndarray]:
  """Flax variables -> the upstream state dict (numpy arrays in torch layout)."""
  gate = model_spec_of(model).gate
  state = {}
  for (collection, path), leaf in flatten(variables).items():
    value = np.asarray(leaf)
    if path[-1] == "num_batches_tracked":
      value = value.astype(np.int64)
    state[torch_key(collection, path, gate)] = np.array(_to_torch_layout(value), order="C")
  return state


def _strip_data_parallel(key: str) -> str:
  return key[len("module."):] if key.startswith("module.") else key


def _from_state_dict(state_dict: Mapping[str, np.ndarray], shapes: FlatVariables,
                     gate: spec_lib.Gate) -> tuple[FlatVariables, list[str]]:
  """The state dict's entries for each model variable (flax layout), and the unused keys."""
  state = {_strip_data_parallel(k): np.asarray(v) for k, v in state_dict.items()}
  found, used = {}, set()
  for (collection, path), template in shapes.items():
    key = torch_key(collection, path, gate)
    if key in state:
      used.add(key)
      value = state[key]
      found[collection, path] = (_to_flax_layout(value) if value.ndim == len(template.shape)
                                 else value)
  return found, sorted(set(state) - used)


def from_state_dict(state_dict: Mapping[str, Any], model) -> dict[str, Any]:
  """An upstream state dict (numpy arrays or torch tensors, copied) -> exactly the
  {"params", "batch_stats"} of `model`."""
  model_spec = model_spec_of(model)
  arrays = {k: np.array(v.detach().cpu() if hasattr(v, "detach") else v)
            for k, v in state_dict.items()}
  found, unused = _from_state_dict(arrays, flatten(variable_shapes(model_spec)), model_spec.gate)
  return exact_variables(Source("the state dict", found, unused, is_upstream_file=True),
                         model_spec)


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Source:
  """What a source holds, keyed like the model's variables."""
  description: str
  found: FlatVariables  # values for model variables present in the source (flax layout)
  unused: list[str]  # source entries no model variable maps to
  model_spec: spec_lib.ModelSpec | None = None  # recorded by the source itself, if any
  step: int | None = None  # the training step, for a workdir
  is_upstream_file: bool = False  # names are upstream state-dict keys


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The upstream state dict in a .safetensors or .pth/.pt file."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as error:  # safetensors raises its own error types
      raise ValueError(f"Could not read {path} as safetensors ({error}); the file may be "
                       "truncated or not a safetensors file.") from error
  try:
    from rap_flax.pytorch import checkpoint_io  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ValueError(f"Reading {path} needs PyTorch: pip install 'rap_flax[torch]'.") from error
  return checkpoint_io.read_state_dict(path)


def _step_directory(path: str) -> tuple[str, int] | None:
  """(workdir, step) for WORKDIR/checkpoints/STEP[/state]."""
  parts = os.path.normpath(path).split(os.sep)
  if parts and parts[-1] == "state":
    parts = parts[:-1]
  if len(parts) >= 2 and parts[-1].isdigit() and parts[-2] == "checkpoints":
    return os.sep.join(parts[:-2]) or os.sep, int(parts[-1])
  return None


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints"))


def _flax_source(description: str, tree: Mapping[str, Any], shapes: FlatVariables,
                 model_spec: spec_lib.ModelSpec | None, step: int | None = None) -> Source:
  stored = flatten(tree)
  found = {key: np.asarray(stored[key]) for key in shapes if key in stored}
  unused = sorted("/".join((c,) + p) for c, p in set(stored) - set(found))
  return Source(description, found, unused, model_spec, step)


def open_source(source: str, model=None, checkpoint: str = "best") -> Source:
  """Reads `source` (see the module docstring) against the variables of `model`."""
  source = files.expand(os.fspath(source))
  if not os.path.exists(source):
    raise FileNotFoundError(f"No weights at {source}: expected a training workdir, a converter "
                            "directory, or a .pth/.pt/.safetensors file.")
  if os.path.isdir(source) and not os.listdir(source):
    raise FileNotFoundError(f"{source} is empty: it holds no checkpoints (train first with "
                            "python train.py --config=... --workdir=...) and no weights.")
  if os.path.isfile(source):
    if model is None:
      raise ValueError(f"{source} does not say which model it holds; describe the model "
                       "(a config, e.g. --config=configs/NAME.py).")
    model_spec = model_spec_of(model)
    shapes = flatten(variable_shapes(model_spec))
    found, unused = _from_state_dict(read_state_dict(source), shapes, model_spec.gate)
    return Source(source, found, unused, is_upstream_file=True)
  step_dir = _step_directory(source)
  if step_dir or is_workdir(source) or os.path.basename(os.path.normpath(source)) == (
      "checkpoints"):
    workdir, step = step_dir or (
        source if is_workdir(source) else os.path.dirname(os.path.normpath(source)), None)
    return _workdir_source(workdir, model, str(step) if step is not None else checkpoint)
  return _converter_source(source, model)


def _workdir_source(workdir: str, model, checkpoint: str) -> Source:
  from rap_flax.training import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  with checkpoint_lib.Checkpoints(workdir, read_only=True) as checkpoints:
    step, tree, stored_spec = checkpoints.restore_variables(checkpoint)
  model_spec = model_spec_of(model) if model is not None else stored_spec
  if model_spec is None:
    raise ValueError(f"The checkpoints in {workdir} do not record their model; describe it "
                     "with a config (--config=configs/NAME.py).")
  return _flax_source(f"{workdir} (step {step})", tree, flatten(variable_shapes(model_spec)),
                      stored_spec, step)


def _converter_source(directory: str, model) -> Source:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = os.path.abspath(directory)
  stored_spec = None
  metadata_file = os.path.join(directory, MODEL_METADATA_FILE)
  if os.path.isfile(metadata_file):
    with open(metadata_file) as f:
      stored_spec = spec_lib.ModelSpec.from_dict(json.load(f))
  model_spec = model_spec_of(model) if model is not None else stored_spec
  if model_spec is None:
    raise ValueError(f"{directory} does not record its model; describe it with a config "
                     "(--config=configs/NAME.py).")
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.restore(directory)
  except Exception as error:  # orbax raises many types for a directory it cannot read
    raise ValueError(f"Could not read {directory} as a rap_flax weights directory "
                     f"({type(error).__name__}: {str(error)[:200]}); expected a training "
                     "workdir, a directory written by `python -m rap_flax.convert to-flax`, or "
                     "a .pth/.safetensors file.") from error
  return _flax_source(directory, tree, flatten(variable_shapes(model_spec)), stored_spec)


def save_flax_directory(variables: Mapping[str, Any], model, directory: str) -> None:
  """Writes {params, batch_stats} as an orbax directory that records its model."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  directory = os.path.abspath(files.expand(directory))
  if os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; choose a new output directory.")
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(directory, {c: variables[c] for c in COLLECTIONS})
  with files.atomic_output(os.path.join(directory, MODEL_METADATA_FILE)) as tmp:
    with open(tmp, "w") as f:
      json.dump(model_spec_of(model).to_dict(), f, indent=2)


def save_state_dict(variables: Mapping[str, Any], model, path: str,
                    overwrite: bool = False) -> None:
  """Writes the upstream Dogs format (.pth) or a flat .safetensors file, atomically."""
  state = to_state_dict(variables, model)
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    with files.atomic_output(path, overwrite) as tmp:
      save_file(state, tmp)
    return
  from rap_flax.pytorch import checkpoint_io  # pylint: disable=g-import-not-at-top
  if not overwrite and os.path.exists(path):
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
  checkpoint_io.save_state_dict(state, path)


# ----------------------------------------------------------------------------- loading


def _describe(model_spec: spec_lib.ModelSpec) -> str:
  return ", ".join(f"{k}={v}" for k, v in model_spec.to_dict().items())


def _listing(title: str, names: list[str], limit: int = 12) -> str:
  if not names:
    return ""
  more = f"\n    ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"  {title} ({len(names)}):\n    " + "\n    ".join(names[:limit]) + more


def load_variables(source: str, model=None, checkpoint: str = "best") -> dict[str, Any]:
  """{"params", "batch_stats"} of `model` from `source`, exactly (see the module docstring)."""
  return exact_variables(open_source(source, model, checkpoint), model)


def exact_variables(opened: Source, model=None) -> dict[str, Any]:
  """The variables of an opened source, which must hold exactly those of `model`."""
  model_spec = model_spec_of(model) if model is not None else opened.model_spec
  shapes = flatten(variable_shapes(model_spec))
  gate = model_spec.gate
  name = lambda key: (torch_key(key[0], key[1], gate) if opened.is_upstream_file
                      else "/".join((key[0],) + key[1]))
  missing = [name(key) for key in shapes if key not in opened.found]
  mismatched = [f"{name(key)}: source {opened.found[key].shape}, model {shapes[key].shape}"
                for key in shapes if key in opened.found
                and opened.found[key].shape != shapes[key].shape]
  if missing or mismatched or opened.unused:
    raise CheckpointMismatchError(
        f"{opened.description} does not hold the weights of the requested model "
        f"({_describe(model_spec)}). Describe the model it was trained as.\n" + "\n".join(
            s for s in (_listing("missing", missing), _listing("unexpected", opened.unused),
                        _listing("shape mismatches", mismatched)) if s))
  return unflatten({key: np.asarray(value, dtype=shapes[key].dtype)
                    for key, value in opened.found.items()})


@dataclasses.dataclass
class Matched:
  """A source matched leniently to a model (fine-tuning)."""
  variables: FlatVariables  # the variables taken from the source
  reinitialised: list[str]  # model variables left at their initial value, with the reason
  unused: list[str]


def match_variables(source: str, model, checkpoint: str = "best",
                    exclude: str | None = None) -> Matched:
  """The variables of `source` that fit `model`: same name and shape, not matching the
  regex `exclude` (on "params/backbone/.../kernel"). Others keep their initial values; a
  model variable that the source lacks entirely is an error, unless excluded."""
  opened = open_source(source, model, checkpoint)
  shapes = flatten(variable_shapes(model))
  pattern = re.compile(exclude) if exclude else None
  taken, reinitialised, missing = {}, [], []
  for key, template in shapes.items():
    name = "/".join((key[0],) + key[1])
    if pattern is not None and pattern.search(name):
      reinitialised.append(f"{name} (excluded by init_from_exclude)")
    elif key not in opened.found:
      missing.append(name)
    elif opened.found[key].shape != template.shape:
      reinitialised.append(f"{name} (source {opened.found[key].shape}, model "
                           f"{template.shape})")
    else:
      taken[key] = np.asarray(opened.found[key], dtype=template.dtype)
  if missing:
    raise CheckpointMismatchError(
        f"{opened.description} lacks weights of this model; it was trained as another "
        "architecture or gate, or add them to config.init_from_exclude.\n"
        + _listing("missing", missing))
  return Matched(taken, reinitialised, opened.unused)
