"""Static int8 quantization of an exported graph: onnxruntime post-training quantization.

QDQ format, int8 weights, 8-bit activations, MinMax ranges from calibration images. The
calibration images come from the run's own data config: the first images of its train split
through the eval transforms (no augmentation), in the split's fixed order, so the same run
gives the same file. The result is checked against the float32 graph on validation images
before it is written.

Which operators are quantized, and per-tensor vs per-channel weights, were chosen by
measurement (`python benchmarks/int8_choices.py`; the figures are in the README's "Deploy
(ONNX)"): see RECIPE.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Iterator

import numpy as np
from onnxruntime import quantization

from rap_flax import files, spec as spec_lib

CALIBRATION_BATCH_SIZE = 32
# Fewest of the check images whose top-1 must agree with float32 for an export to be kept.
MIN_TOP1_AGREEMENT = 0.9


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What quantize_static is asked to quantize, and how."""
  op_types: tuple[str, ...] | None  # None: every operator type onnxruntime can quantize
  activations: str = "uint8"  # "uint8" (U8S8) or "int8" (S8S8); the weights are always int8
  per_channel: bool = False  # one weight scale per output channel, else one per tensor
  # (scope, op types) rules: a node whose name contains the scope, e.g. "/classifier/" or
  # "/TOPIMAP/" (the torch exporter names nodes by module path; rap_flax.spec names the
  # modules), and whose type is listed (None: any type) stays float.
  keep_float: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
  # onnxruntime's pre-processing first (shape inference, constant folding, no Identity nodes:
  # the exporter shares equal constants through Identity, which leaves a conv bias float).
  preprocess: bool = True

  def keeps_float(self, node) -> bool:
    return any(scope in node.name and (ops is None or node.op_type in ops)
               for scope, ops in self.keep_float)


BETWEEN_OPS = ("Relu", "Clip", "Add", "Mul", "Concat", "GlobalAveragePool")
# Chosen by measurement (benchmarks/int8_choices.py, README "Deploy (ONNX)"). U8S8: with int8
# activations onnxruntime's CPU kernels fuse only some convolutions and run the rest in float
# on dequantized weights. Every Conv and Gemm has int8 weights; between them the residual
# Adds, activations and pools stay in int8. Inside the gates, only the spatial conv and the
# channel MLP are int8: their statistics (std, TopK ranking, sigmoids, products) stay float.
GATE_SCOPES = tuple(f"/{gate.upstream_name}/" for gate in spec_lib.GATES.values()
                    if gate.upstream_name)
RECIPE = Recipe(op_types=("Conv", "Gemm", *BETWEEN_OPS), per_channel=True,
                keep_float=tuple((scope, BETWEEN_OPS) for scope in GATE_SCOPES))


class QuantizationError(ValueError):
  """The int8 graph does not compute what the float32 one does (e.g. bad calibration data)."""


def calibration_images(data_config, num_batches: int,
                       batch_size: int = CALIBRATION_BATCH_SIZE) -> np.ndarray:
  """The first num_batches * batch_size train images through the eval transforms, NCHW."""
  config = data_config.copy_and_resolve_references()
  config.eval_split = data_config.train_split or "train"  # the eval pipeline on train images
  return _first_images(config, num_batches, batch_size)


def check_images(data_config, batch_size: int = CALIBRATION_BATCH_SIZE) -> np.ndarray:
  """The first batch of the eval split, NCHW: what the int8 graph is checked on (its top-1
  against float32's, no labels), read apart from the calibration images so that a fault in
  those shows."""
  return _first_images(data_config, 1, batch_size)


def _first_images(data_config, num_batches: int, batch_size: int) -> np.ndarray:
  from rap_flax import data  # pylint: disable=g-import-not-at-top

  if num_batches < 1:
    raise ValueError(f"--calibration_batches={num_batches}: use at least 1.")
  images, to_model_input = [], data.model_input(data_config)
  for batch in data.create_eval_iterator(data_config, batch_size):
    images.append(np.asarray(to_model_input(batch["image"][batch["mask"]])))
    if len(images) == num_batches:
      break
  return np.concatenate(images).transpose(0, 3, 1, 2)


class _Batches(quantization.CalibrationDataReader):
  """The calibration images in batches; set_range lets onnxruntime take them a few at a time."""

  def __init__(self, images: np.ndarray, batch_size: int):
    self._batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    self.set_range(0, len(self._batches))

  def __len__(self) -> int:
    return len(self._batches)

  def set_range(self, start_index: int, end_index: int) -> None:
    self._next: Iterator[np.ndarray] = iter(self._batches[start_index:end_index])

  def get_next(self):
    batch = next(self._next, None)
    return None if batch is None else {"images": batch}


@dataclasses.dataclass(frozen=True)
class Report:
  calibration_images: int
  check_images: int
  top1_agreement: float  # of the check images, those whose top-1 class int8 and float32 share


def quantize(float_path: str, output: str, data_config, calibration_batches: int,
             overwrite: bool = False, recipe: Recipe = RECIPE) -> Report:
  """Writes the int8 version of the graph at `float_path`, calibrated on `calibration_batches`
  batches of the train split of `data_config`, then checked on the first eval batch: when
  fewer than MIN_TOP1_AGREEMENT of it keep their float32 top-1 class, QuantizationError is
  raised and nothing is written."""
  calibration = calibration_images(data_config, calibration_batches)
  checked = check_images(data_config)
  with tempfile.TemporaryDirectory() as scratch:
    quantized = os.path.join(scratch, "int8.onnx")
    quantize_static(float_path, quantized, calibration, recipe)
    agreement = top1_agreement(float_path, quantized, checked)
    if agreement < MIN_TOP1_AGREEMENT:
      raise QuantizationError(
          f"The int8 graph keeps the float32 top-1 class of only {100 * agreement:.0f}% of "
          f"{len(checked)} validation images (at least {100 * MIN_TOP1_AGREEMENT:.0f}% "
          "expected); nothing written. Calibrate on the data the model was trained on "
          "(the --config of its run), or on more --calibration_batches.")
    with files.atomic_output(output, overwrite) as tmp:
      os.replace(quantized, tmp)
  return Report(len(calibration), len(checked), agreement)


def quantize_static(float_path: str, output: str, images: np.ndarray, recipe: Recipe) -> None:
  """onnxruntime's static quantization of `float_path` as `recipe` says, calibrated on
  `images` (NCHW): QDQ format, MinMax ranges."""
  import onnx  # pylint: disable=g-import-not-at-top
  from onnxruntime.quantization import shape_inference  # pylint: disable=g-import-not-at-top

  activations = {"uint8": quantization.QuantType.QUInt8, "int8": quantization.QuantType.QInt8}
  with tempfile.TemporaryDirectory() as scratch:
    if recipe.preprocess:
      preprocessed = os.path.join(scratch, "preprocessed.onnx")
      shape_inference.quant_pre_process(float_path, preprocessed)
      float_path = preprocessed
    nodes = onnx.load(float_path, load_external_data=False).graph.node
    quantization.quantize_static(
        float_path, output, _Batches(images, CALIBRATION_BATCH_SIZE),
        quant_format=quantization.QuantFormat.QDQ,
        activation_type=activations[recipe.activations],
        weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
        per_channel=recipe.per_channel,
        nodes_to_exclude=[node.name for node in nodes if recipe.keeps_float(node)],
        calibrate_method=quantization.CalibrationMethod.MinMax,
        # Ranges merged batch by batch, not from every activation of every calibration image
        # held at once (gigabytes at 224px). (CalibMaxIntermediateOutputs, meant for this,
        # drops the batches it holds in onnxruntime 1.32 instead of merging them.)
        extra_options={"CalibStridedMinMax": 1})


def logits(path: str, images: np.ndarray, batch_size: int = CALIBRATION_BATCH_SIZE) -> np.ndarray:
  """The graph's logits for `images` (NCHW), by onnxruntime on the CPU."""
  import onnxruntime  # pylint: disable=g-import-not-at-top

  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  return np.concatenate([session.run(None, {"images": images[i:i + batch_size]})[0]
                         for i in range(0, len(images), batch_size)])


def top1_agreement(reference: str, candidate: str, images: np.ndarray) -> float:
  return float(np.mean(logits(reference, images).argmax(1) == logits(candidate, images).argmax(1)))
