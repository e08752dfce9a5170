"""Flax variables as flat {(collection, path): array} dicts, and the upstream (PyTorch)
state-dict keys and layouts they map to, path by path."""

from __future__ import annotations

from typing import Any, Mapping

import flax
import numpy as np

from rap_flax import spec as spec_lib

COLLECTIONS = ("params", "batch_stats")
PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
STAT_LEAVES = {"mean": "running_mean", "var": "running_var",
               "num_batches_tracked": "num_batches_tracked"}
GATE_SCOPES = ("attention", "final_attention")

FlatVariables = dict[tuple[str, tuple[str, ...]], Any]


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


def flax_name(key: tuple[str, tuple[str, ...]]) -> str:
  """"params/backbone/.../kernel": how logs and errors name a Flax variable."""
  return "/".join((key[0],) + key[1])


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


def to_state_dict(variables: Mapping[str, Any],
                  model: spec_lib.ModelLike) -> dict[str, np.ndarray]:
  """Flax variables -> the upstream state dict (numpy arrays in torch layout)."""
  gate = spec_lib.model_spec_of(model).gate
  state = {}
  for (collection, path), leaf in flatten(variables).items():
    value = np.asarray(leaf)
    if path[-1] == "num_batches_tracked":
      value = value.astype(np.int64)
    state[torch_key(collection, path, gate)] = np.array(_to_torch_layout(value), order="C")
  return state


def from_state_dict(state_dict: Mapping[str, Any], shapes: FlatVariables,
                    gate: spec_lib.Gate) -> tuple[FlatVariables, list[str]]:
  """The state dict's entry for each variable of `shapes` (in Flax layout), and the keys
  that no variable maps to. `module.` prefixes (DataParallel) are dropped."""
  state = {k[len("module."):] if k.startswith("module.") else k: np.asarray(v)
           for k, v in state_dict.items()}
  found, used = {}, set()
  for (collection, path), template in shapes.items():
    key = torch_key(collection, path, gate)
    if key in state:
      used.add(key)
      value = state[key]
      found[collection, path] = (_to_flax_layout(value) if value.ndim == len(template.shape)
                                 else value)
  return found, sorted(set(state) - used)
