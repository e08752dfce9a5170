"""PyTorch checkpoint files: read any upstream format without running pickled code, write
the upstream Dogs format."""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import numpy as np
import torch

from rap_flax import files


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The model state dict of a .pth/.pt file in any upstream format, as numpy arrays.

  Dogs scripts: {"model_state_dict": ...}; ImageNet script: {"state_dict": ...} (with
  `module.` prefixes, stripped by the caller); or a bare state dict. Only tensors and plain
  containers are unpickled (`weights_only=True`).
  """
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


def save_state_dict(state_dict: Mapping[str, Any], path: str) -> None:
  """Writes {"model_state_dict": ...} (the upstream Dogs format) atomically."""
  tensors = {k: torch.from_numpy(np.array(v, order="C")) for k, v in state_dict.items()}
  with files.atomic_output(path) as tmp:
    torch.save({"model_state_dict": tensors}, tmp)
