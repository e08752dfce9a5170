"""The files weights live in, read and written in one place: upstream PyTorch checkpoints
(.pth/.pt, never unpickling code), .safetensors, directories written by the converter
(orbax + the model they hold), and training workdirs (through `weights.workdir`).

`open_source` reads any of them against a model's variable template and says what it found
(`Source`); `rap_flax.weights.loading` decides whether that is exactly the model's weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from typing import Any, Mapping

import numpy as np
import orbax.checkpoint as ocp

from rap_flax import files
from rap_flax import spec as spec_lib
from rap_flax.weights import keys, template, workdir

MODEL_METADATA_FILE = "rap_flax_model.json"  # beside a converter directory's orbax files

# A weights source: a path, or an upstream state dict already in memory.
WeightsSource = str | os.PathLike | Mapping[str, Any]


@dataclasses.dataclass
class Source:
  """What a source holds, keyed like the variables of the model it was read against."""
  description: str
  model_spec: spec_lib.ModelSpec  # the model it was read against (given, or recorded)
  shapes: keys.FlatVariables  # that model's variable template
  found: keys.FlatVariables  # values for model variables present in the source (flax layout)
  unused: list[str]  # source entries no model variable maps to
  step: int | None = None  # the training step, for a workdir
  is_upstream_file: bool = False  # names are upstream state-dict keys

  def name(self, key: tuple[str, tuple[str, ...]]) -> str:
    """A variable as this source names it."""
    if self.is_upstream_file:
      return keys.torch_key(key[0], key[1], self.model_spec.gate)
    return keys.flax_name(key)


# ----------------------------------------------------------------------------- PyTorch files


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
  """The model state dict of a .pth/.pt file in any upstream format.

  Dogs scripts: {"model_state_dict": ...}; ImageNet script: {"state_dict": ...} (with
  `module.` prefixes); or a bare state dict. Only tensors and plain containers are
  unpickled (`weights_only=True`).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top  # optional: only .pth files need it
  except ImportError as error:
    raise ValueError(f"Reading {path} needs PyTorch: pip install 'rap_flax[torch]'.") from error
  try:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises many types for a bad file
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
      raise ValueError(
          f"Refusing to load {path}: it contains pickled objects other than tensors and plain "
          "containers, and loading them could execute code. Re-save only the state dict "
          "(torch.save({'model_state_dict': model.state_dict()}, path)).") from error
    raise ValueError(f"Could not read {path} as a PyTorch checkpoint ({type(error).__name__}); "
                     "the file may be truncated or not written by torch.save.") from error
  if isinstance(checkpoint, dict):
    for wrapper in ("model_state_dict", "state_dict"):
      if isinstance(checkpoint.get(wrapper), dict):
        checkpoint = checkpoint[wrapper]
        break
  if not isinstance(checkpoint, dict) or not checkpoint or not all(
      isinstance(v, torch.Tensor) for v in checkpoint.values()):
    raise ValueError(f"{path} holds no state dict: expected {{'model_state_dict': ...}}, "
                     "{'state_dict': ...} or a dict of tensors.")
  return {k: v.detach().cpu().numpy() for k, v in checkpoint.items()}


def _write_torch_file(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """{"model_state_dict": ...} (the upstream Dogs format), atomically."""
  import torch  # pylint: disable=g-import-not-at-top  # optional: only .pth files need it

  tensors = {k: torch.from_numpy(np.array(v, order="C")) for k, v in state_dict.items()}
  with files.atomic_output(path) as tmp:
    torch.save({"model_state_dict": tensors}, tmp)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The upstream state dict in a .safetensors or .pth/.pt file."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as error:  # safetensors raises its own error types
      raise ValueError(f"Could not read {path} as safetensors ({error}); the file may be "
                       "truncated or not a safetensors file.") from error
  return _read_torch_file(path)


def save_state_dict(variables: Mapping[str, Any], model: spec_lib.ModelLike, path: str,
                    overwrite: bool = False) -> None:
  """Writes the upstream Dogs format (.pth) or a flat .safetensors file, atomically."""
  state = keys.to_state_dict(variables, model)
  if not overwrite and os.path.exists(path):
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    with files.atomic_output(path, overwrite) as tmp:
      save_file(state, tmp)
    return
  _write_torch_file(state, path)


# ----------------------------------------------------------------------------- converter dirs


def save_flax_directory(variables: Mapping[str, Any], model: spec_lib.ModelLike,
                        directory: str) -> None:
  """Writes {params, batch_stats} as an orbax directory that records its model."""
  directory = os.path.abspath(files.expand(directory))
  if os.path.exists(directory):
    raise FileExistsError(f"{directory} exists; choose a new output directory.")
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(directory, {c: variables[c] for c in keys.COLLECTIONS})
  with files.atomic_output(os.path.join(directory, MODEL_METADATA_FILE)) as tmp:
    with open(tmp, "w") as f:
      json.dump(spec_lib.model_spec_of(model).to_dict(), f, indent=2)


def _read_flax_directory(directory: str) -> tuple[dict[str, Any], spec_lib.ModelSpec | None]:
  stored_spec = None
  metadata_file = os.path.join(directory, MODEL_METADATA_FILE)
  if os.path.isfile(metadata_file):
    with open(metadata_file) as f:
      stored_spec = spec_lib.ModelSpec.from_dict(json.load(f))
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      tree = checkpointer.restore(directory)
  except Exception as error:  # orbax raises many types for a directory it cannot read
    raise ValueError(f"Could not read {directory} as a rap_flax weights directory "
                     f"({type(error).__name__}: {str(error)[:200]}); expected a training "
                     "workdir, a directory written by `python -m rap_flax.convert to-flax`, or "
                     "a .pth/.safetensors file.") from error
  return tree, stored_spec


# ----------------------------------------------------------------------------- any source


def _chosen_spec(requested: spec_lib.ModelSpec | None, stored: spec_lib.ModelSpec | None,
                 where: str) -> spec_lib.ModelSpec:
  if requested is None and stored is None:
    raise ValueError(f"{where} does not record its model; describe it with a config "
                     "(--config=configs/NAME.py).")
  return requested or stored


def _flax_source(description: str, tree: Mapping[str, Any], model_spec: spec_lib.ModelSpec,
                 step: int | None = None) -> Source:
  shapes = template.flat_shapes(model_spec)
  stored = keys.flatten(tree)
  found = {key: np.asarray(stored[key]) for key in shapes if key in stored}
  unused = sorted(keys.flax_name(key) for key in set(stored) - set(found))
  return Source(description, model_spec, shapes, found, unused, step)


def _upstream_source(description: str, state_dict: Mapping[str, Any],
                     model_spec: spec_lib.ModelSpec | None) -> Source:
  if model_spec is None:
    raise ValueError(f"{description} does not say which model it holds; describe the model "
                     "(a config, e.g. --config=configs/NAME.py).")
  shapes = template.flat_shapes(model_spec)
  found, unused = keys.from_state_dict(state_dict, shapes, model_spec.gate)
  return Source(description, model_spec, shapes, found, unused, is_upstream_file=True)


def open_source(source: WeightsSource, model: spec_lib.ModelLike | None = None,
                checkpoint: str = "best") -> Source:
  """Reads `source` against the variables of `model` (default: the model the source records:
  workdirs and converter directories do). `checkpoint` picks a workdir's step."""
  requested = None if model is None else spec_lib.model_spec_of(model)
  if isinstance(source, Mapping):
    arrays = {k: np.array(v.detach().cpu() if hasattr(v, "detach") else v)
              for k, v in source.items()}
    return _upstream_source("the state dict", arrays, requested)
  source = files.expand(os.fspath(source))
  if not os.path.exists(source):
    raise FileNotFoundError(f"No weights at {source}: expected a training workdir, a converter "
                            "directory, or a .pth/.pt/.safetensors file.")
  if os.path.isdir(source) and not os.listdir(source):
    raise FileNotFoundError(f"{source} is empty: it holds no checkpoints (train first with "
                            "python train.py --config=... --workdir=...) and no weights.")
  if os.path.isfile(source):
    return _upstream_source(source, read_state_dict(source), requested)
  step_dir = workdir.step_directory(source)
  if step_dir or workdir.is_workdir(source) or os.path.basename(os.path.normpath(source)) == (
      workdir.SUBDIRECTORY):
    root, step = step_dir or (
        source if workdir.is_workdir(source) else os.path.dirname(os.path.normpath(source)),
        None)
    with workdir.Checkpoints(root, read_only=True) as checkpoints:
      step, tree, stored_spec = checkpoints.restore_variables(
          str(step) if step is not None else checkpoint)
    return _flax_source(f"{root} (step {step})", tree,
                        _chosen_spec(requested, stored_spec, f"The checkpoints in {root}"), step)
  directory = os.path.abspath(source)
  tree, stored_spec = _read_flax_directory(directory)
  return _flax_source(directory, tree, _chosen_spec(requested, stored_spec, directory))
