"""ONNX export through the PyTorch model with the upstream layout.

The graph is traced from `rap_flax.pytorch.models` with the converted weights, so it is the
upstream network op for op (TopK for the SRAP/MRAP ranking, HardSwish, ...), with a dynamic
batch dimension. It takes NCHW float images in [0, 1] ("images") and returns the logits
("logits"). torch.onnx's TorchScript exporter is used: it needs only the `onnx` package.
`export_for_run` exports at the image size the run trained at and, asked to, quantizes to int8
(rap_flax.pytorch.quantize) on images of the run's train split.
"""

from __future__ import annotations

import os
import tempfile
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


def trained_image_size(config) -> int | None:
  """The image size the run of `config` trains at; None without a config."""
  if config is None:
    return None
  if config.data.image_size:
    return int(config.data.image_size)
  from rap_flax import data  # pylint: disable=g-import-not-at-top
  return data.get_dataset_info(config.data).image_size


def export_for_run(variables: Mapping[str, Any], model_spec: spec_lib.ModelSpec, path: str,
                   config=None, image_size: int | None = None, quantize: str | None = None,
                   calibration_batches: int = 10, overwrite: bool = False) -> str:
  """Exports at `image_size`, by default the size the run of `config` (its training config)
  trains at; int8 if `quantize`. Returns what the converter's summary line adds."""
  size = image_size or trained_image_size(config) or weights.template_image_size(model_spec)
  if not quantize:
    export(variables, model_spec, path, size, overwrite)
    return f", {size}px"
  if config is None:
    raise ValueError(f"--quantize={quantize} calibrates on the run's training images: pass the "
                     "--config it was trained with (a workdir records it).")
  from rap_flax.pytorch import quantize as quantize_lib  # pylint: disable=g-import-not-at-top
  data_config = config.data.copy_and_resolve_references()
  data_config.image_size = size
  with tempfile.TemporaryDirectory() as scratch:
    float_path = os.path.join(scratch, "float32.onnx")
    export(variables, model_spec, float_path, size)
    report = quantize_lib.quantize(float_path, path, data_config, calibration_batches, overwrite)
    ratio = os.path.getsize(path) / os.path.getsize(float_path)
  return (f", {size}px, {quantize}: {os.path.getsize(path) / 1e6:.2f} MB = {ratio:.2f}x "
          f"float32; calibrated on {report.calibration_images} {data_config.dataset} train "
          f"images; float32's top-1 kept on {100 * report.top1_agreement:.0f}% of "
          f"{report.check_images} validation images")
