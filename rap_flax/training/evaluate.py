"""Evaluation over a whole split: during training, and of a saved (orbax or PyTorch) checkpoint.

BatchNorm runs on its running statistics (train=False), which are identical on every device
because the state is replicated and was updated from global-batch statistics.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from rap_flax.training import checkpoint, config_lib, metrics, parallel, train_state

EvalStep = Callable[[Any, Any], metrics.Metrics]


def make_eval_step(model, mesh: Mesh) -> EvalStep:
  def eval_step(variables, batch) -> metrics.Metrics:
    logits = model.apply(variables, batch["image"], train=False)
    return metrics.Metrics.single_from_model_output(
        mask=batch["mask"], **metrics.per_example_outputs(logits, batch["label"]))

  return jax.jit(eval_step,
                 in_shardings=(parallel.replicated_sharding(mesh), parallel.data_sharding(mesh)),
                 out_shardings=parallel.replicated_sharding(mesh))


def evaluate(eval_step: EvalStep, variables, config: ml_collections.ConfigDict,
             mesh: Mesh) -> dict[str, float]:
  """loss, top1, top5 (fractions) and num_examples over the whole eval split."""
  from rap_flax import data  # pylint: disable=g-import-not-at-top

  batch_size = parallel.per_host_batch_size(config.eval_batch_size, "eval_batch_size")
  sharding = parallel.data_sharding(mesh)
  total = None
  for batch in data.create_eval_iterator(config, batch_size=batch_size):
    batch_metrics = eval_step(variables, parallel.make_global_batch(batch, sharding))
    total = batch_metrics if total is None else total.merge(batch_metrics)
  if total is None:
    raise ValueError(f"The eval split of {config.dataset!r} yielded no batches.")
  return {**metrics.to_floats(total), "num_examples": metrics.num_examples(total)}


def resolve_step(checkpoints: checkpoint.Checkpoints, which: str) -> int:
  """`which` is "best", "latest" or a step number."""
  checkpoints.check_not_empty()
  if which == "latest":
    return checkpoints.latest_step()
  if which == "best":
    step = checkpoints.best_step()
    if step is None:
      logging.warning("No checkpoint has a validation score yet; using the latest.")
      return checkpoints.latest_step()
    return step
  if not which.isdigit():
    raise ValueError(f"checkpoint={which!r}: use one of {config_lib.CHECKPOINT_CHOICES} or "
                     "a step number.")
  if int(which) not in checkpoints.all_steps():
    raise ValueError(f"No checkpoint of step {which} in {checkpoints.directory}; saved steps: "
                     f"{checkpoints.all_steps()}.")
  return int(which)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str | None,
                        which: str = "best", torch_checkpoint: str | None = None,
                        output: str | None = None) -> dict[str, Any]:
  """Evaluates an orbax checkpoint of `workdir` or an upstream PyTorch checkpoint.

  Prints and returns loss/top1/top5/num_examples; writes them as JSON to `output` (default:
  `<workdir>/eval_<which>.json`, or `eval_torch.json` next to the torch checkpoint).
  """
  from rap_flax import data  # pylint: disable=g-import-not-at-top

  config_lib.validate_config(config)
  mesh = parallel.create_mesh()
  replicated = parallel.replicated_sharding(mesh)
  info = data.get_dataset_info(config)
  model = train_state.create_model(config, info.num_classes)
  if torch_checkpoint:
    from rap_flax import convert  # pylint: disable=g-import-not-at-top
    variables = jax.device_put(convert.load_torch_checkpoint(torch_checkpoint, model),
                               replicated)
    result: dict[str, Any] = {"source": os.path.abspath(torch_checkpoint)}
    default_output = os.path.join(os.path.dirname(os.path.abspath(torch_checkpoint)),
                                  "eval_torch.json")
  else:
    if not workdir:
      raise ValueError("Pass --workdir (orbax checkpoints) or --torch_checkpoint.")
    with checkpoint.Checkpoints(workdir, read_only=True) as checkpoints:
      step = resolve_step(checkpoints, which)
      variables = checkpoints.restore_variables(
          train_state.abstract_variables(model, info.image_size, replicated), step,
          train_state.model_fields(config, info.num_classes))
    result = {"source": checkpoints.directory, "checkpoint": which, "step": step}
    default_output = os.path.join(workdir, f"eval_{which}.json")
  result.update(dataset=info.name, **evaluate(make_eval_step(model, mesh), variables, config,
                                               mesh))
  logging.info("Evaluation of %s: top-1 %.2f%%, top-5 %.2f%%, loss %.4f on %d examples.",
               result["source"], 100 * result["top1"], 100 * result["top5"], result["loss"],
               result["num_examples"])
  write_json(output or default_output, result)
  return result


def write_json(path: str, values: dict[str, Any]) -> None:
  """Atomic write from the first process only."""
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(values, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
