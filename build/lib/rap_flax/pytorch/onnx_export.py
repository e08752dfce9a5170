"""ONNX export through the PyTorch model with the upstream layout.

The graph is traced from `rap_flax.pytorch.models` with the converted weights, so it is the
upstream network op for op (TopK for the SRAP/MRAP ranking, HardSwish, ...), with a dynamic
batch dimension. It takes NCHW float images in [0, 1] ("images") and returns the logits
("logits"). torch.onnx's TorchScript exporter is used: it needs only the `onnx` package.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch

from rap_flax import files, spec as spec_lib, weights
from rap_flax.pytorch import models

OPSET = 17


def torch_model_with(variables: Mapping[str, Any], model_spec: spec_lib.ModelSpec):
  """The PyTorch model of `model_spec` holding `variables` (strict load), in eval mode."""
  model = models.create_model(model_spec)
  state = {k: torch.from_numpy(v) for k, v in weights.to_state_dict(variables, model_spec).items()}
  model.load_state_dict(state, strict=True)
  return model.eval()


def export(variables: Mapping[str, Any], model_spec: spec_lib.ModelSpec, path: str,
           image_size: int | None = None, overwrite: bool = False) -> None:
  """Writes the model as ONNX with a dynamic batch dimension, atomically."""
  size = image_size or weights.template_image_size(model_spec)
  model = torch_model_with(variables, model_spec)
  example = torch.rand(2, 3, size, size)
  with files.atomic_output(path, overwrite) as tmp, warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the exporter's deprecation notes, not actionable here
    torch.onnx.export(model, (example,), tmp, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=OPSET, dynamo=False)
