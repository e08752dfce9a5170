"""Config fields by their dotted names ("model.arch"), and the closest known name to a typo."""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any, Iterable

import ml_collections


def load_recipe(path: str, *args) -> ml_collections.ConfigDict:
  """get_config(*args) of the config file at `path`: for recipes that extend another one
  (by file, so that configs load from any working directory)."""
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{"model.arch": ..., "batch_size": ...}: every leaf field under its dotted name."""
  flat = {}
  for key, value in config.items():
    name = prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def closest(name: str, known: Iterable[str]) -> str | None:
  """The known field `name` most likely stands for: a near spelling of the whole name, or the
  same (or a near) last part under another section ("dataset" -> "data.dataset")."""
  known = list(known)
  match = difflib.get_close_matches(name, known, n=1)
  if match:
    return match[0]
  leaves = {field.rsplit(".", 1)[-1]: field for field in known}
  match = difflib.get_close_matches(name.rsplit(".", 1)[-1], list(leaves), n=1)
  return leaves[match[0]] if match else None
