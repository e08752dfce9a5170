"""Evaluation over a whole split: during training, of a saved (orbax or PyTorch) checkpoint,
and of an exported ONNX graph (onnxruntime).

BatchNorm runs on its running statistics (train=False), which are identical on every device
because the state is replicated and was updated from global-batch statistics.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from rap_flax import data, files, weights
from rap_flax.training import config_lib, metrics, parallel

EvalStep = Callable[[Any, Any], metrics.Metrics]


def make_eval_step(model, mesh: Mesh, model_input=data.model_input()) -> EvalStep:
  def eval_step(variables, batch) -> metrics.Metrics:
    logits = model.apply(variables, model_input(batch["image"]), train=False)
    return metrics.Metrics.single_from_model_output(
        mask=batch["mask"], **metrics.per_example_outputs(logits, batch["label"]))

  return jax.jit(eval_step,
                 in_shardings=(parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)),
                 out_shardings=parallel.replicated_sharding(mesh))


def evaluate(eval_step: EvalStep, variables, config: ml_collections.ConfigDict,
             mesh: Mesh) -> dict[str, float]:
  """loss, top1, top5 (fractions) and num_examples over the whole eval split."""
  batch_size = parallel.per_host_batch_size(config.eval_batch_size, "eval_batch_size")
  sharding = parallel.data_sharding(mesh)
  total = None
  for batch in data.create_eval_iterator(config.data, batch_size=batch_size):
    batch_metrics = eval_step(variables, parallel.make_global_batch(batch, sharding))
    total = batch_metrics if total is None else total.merge(batch_metrics)
  if total is None:
    raise ValueError(f"The eval split of {config.data.dataset!r} yielded no batches.")
  return {**metrics.to_floats(total), "num_examples": metrics.num_examples(total)}


def evaluate_checkpoint(config: ml_collections.ConfigDict, source: str,
                        which: str = "best") -> dict[str, Any]:
  """Evaluates the weights of `source` (see rap_flax.load_variables: a workdir, a converter
  directory, a .pth or .safetensors file) as the model `config` describes.

  Returns loss/top1/top5/num_examples with the source, step and dataset.
  """
  config_lib.validate_config(config)
  mesh = parallel.create_mesh()
  info = data.get_dataset_info(config.data)
  model = config_lib.model_for_dataset(config, info)
  opened = weights.open_source(source, model, which)
  variables = jax.device_put(weights.exact_variables(opened),
                             parallel.replicated_sharding(mesh))
  result: dict[str, Any] = {"source": opened.description, "step": opened.step,
                            "dataset": info.name}
  if weights.is_workdir(source):  # best / latest / STEP mean nothing for other weights
    result["checkpoint"] = which
  eval_step = make_eval_step(model, mesh, data.model_input(config.data))
  result.update(evaluate(eval_step, variables, config, mesh))
  _log(result)
  return result


def evaluate_onnx(config: ml_collections.ConfigDict, path: str) -> dict[str, Any]:
  """evaluate_checkpoint for an exported graph (`python -m rap_flax.convert to-onnx`, float32
  or int8), run by onnxruntime on the CPU: the same metrics over the same eval split."""
  import onnxruntime  # pylint: disable=g-import-not-at-top

  config_lib.validate_config(config)
  info = data.get_dataset_info(config.data)
  try:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  except Exception as error:  # onnxruntime raises its own types for unreadable graphs
    raise ValueError(f"onnxruntime cannot load {path} ({' '.join(str(error).split())[:200]})."
                     ) from error
  (images,), (logits,) = session.get_inputs(), session.get_outputs()
  size, classes = images.shape[2:], logits.shape[-1]
  if all(isinstance(d, int) for d in size) and list(size) != [info.image_size] * 2:
    raise ValueError(f"{path} takes {size[0]}x{size[1]} images, but config.data gives "
                     f"{info.image_size}x{info.image_size}: pass --config.data.image_size="
                     f"{size[0]}, or export again at --image_size={info.image_size}.")
  if isinstance(classes, int) and classes != info.num_classes:
    raise ValueError(f"{path} has {classes} outputs, but {info.name!r} has {info.num_classes} "
                     "classes: pass the --config of the run it was exported from.")
  batch_metrics = jax.jit(lambda logits, labels, mask: metrics.Metrics.single_from_model_output(
      mask=mask, **metrics.per_example_outputs(logits, labels)))

  model_input = data.model_input(config.data)

  def eval_step(_, batch) -> metrics.Metrics:
    (batch_logits,) = session.run(
        None, {images.name: np.asarray(model_input(batch["image"])).transpose(0, 3, 1, 2)})
    return batch_metrics(batch_logits, batch["label"], batch["mask"])

  result: dict[str, Any] = {"source": path, "checkpoint": None, "step": None,
                            "dataset": info.name}
  result.update(evaluate(eval_step, None, config, parallel.create_mesh()))
  _log(result)
  return result


def _log(result: dict[str, Any]) -> None:
  logging.info("Evaluation of %s: top-1 %.2f%%, top-5 %.2f%%, loss %.4f on %d examples.",
               result["source"], 100 * result["top1"], 100 * result["top5"], result["loss"],
               result["num_examples"])


def write_json(path: str, values: dict[str, Any]) -> None:
  """Atomic write from the first process only."""
  if jax.process_index() != 0:
    return
  with files.atomic_output(path) as tmp, open(tmp, "w") as f:
    json.dump(values, f, indent=2, sort_keys=True)
