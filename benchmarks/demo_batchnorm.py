"""Why the digits demo validates at 10% in its first epochs while training is at 25-45%.

Trains `configs/digits_srap.py` exactly as train.py does (same seed, steps and batches) for
the first epochs and, at each epoch's end, evaluates the same weights five ways: with the
BatchNorm running statistics (what training logs), and with "precise" statistics (the mean
over one epoch of training batches of each BatchNorm's batch mean and variance, under the
current weights) put in place of: the input BatchNorm only, the backbone BatchNorms (all but
the gates'), the gates' spatial BatchNorms (momentum 0.01 upstream), or all of them.

  python benchmarks/demo_batchnorm.py [--epochs=4]

Deterministic (no timing): the machine's load does not matter. Writes
benchmarks/results/demo_batchnorm.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import harness
from rap_flax import data, spec
from rap_flax.layers import norm
from rap_flax.training import evaluate, metrics, parallel
from rap_flax.training import program as program_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "digits_srap.py")
VARIANTS = ("running", "input_bn", "backbone", "gates", "all")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR,
                                                       "demo_batchnorm.json"))
  return parser.parse_args(argv)


def load_config():
  module_spec = importlib.util.spec_from_file_location("digits_srap", CONFIG)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


def momentum_of(path: tuple[str, ...]) -> float:
  """The Flax momentum of the BatchNorm at `path` (the gates' spatial_bn: upstream's 0.01)."""
  torch_momentum = spec.GATE_BN_MOMENTUM if "spatial_bn" in path else spec.BN_MOMENTUM
  return norm.flax_momentum(torch_momentum)


def precise_statistics(model, variables, config, batches: int) -> dict:
  """Each BatchNorm's batch mean and unbiased variance, averaged over `batches` training
  batches (running = m * old + (1 - m) * batch, solved for batch)."""
  moments = jax.jit(lambda v, images: model.apply(v, images, train=True,
                                                  mutable=["batch_stats"])[1]["batch_stats"])
  old = traverse_util.flatten_dict(variables["batch_stats"])
  total = {}
  iterator = data.create_train_iterator(config.data, batch_size=config.batch_size,
                                        start_step=0, seed=config.seed + 1)
  for _ in range(batches):
    new = traverse_util.flatten_dict(jax.device_get(
        moments(variables, jnp.asarray(next(iterator)["image"]))))
    for path, value in new.items():
      if path[-1] in ("mean", "var"):
        m = momentum_of(path)
        batch = (np.asarray(value) - m * np.asarray(old[path])) / (1 - m)
        total[path] = total.get(path, 0) + batch / batches
  return total


def substituted(variables, precise: dict, variant: str):
  if variant == "running":
    return variables
  flat = dict(traverse_util.flatten_dict(variables["batch_stats"]))
  for path, value in precise.items():
    gate = "spatial_bn" in path
    if (variant == "all" or (variant == "gates" and gate)
        or (variant == "backbone" and not gate) or (variant == "input_bn" and "data_bn" in path)):
      flat[path] = value
  return {"params": variables["params"], "batch_stats": traverse_util.unflatten_dict(flat)}


def main(argv=None) -> None:
  args = parse_args(argv)
  config = load_config()
  mesh = parallel.create_mesh()
  program = program_lib.build(config, mesh, data.get_dataset_info(config.data))
  model, steps_per_epoch, replicated = program.model, program.steps_per_epoch, program.replicated
  state = program.initial_state()
  train_step, eval_step = program.train_step, program.eval_step
  batches = data.create_train_iterator(config.data, batch_size=config.batch_size,
                                       start_step=0, seed=config.seed)
  epochs, window = [], None
  for step in range(args.epochs * steps_per_epoch):
    batch = parallel.make_global_batch(next(batches), parallel.data_sharding(mesh))
    state, step_metrics = train_step(state, batch)
    window = step_metrics if window is None else window.merge(step_metrics)
    if (step + 1) % steps_per_epoch:
      continue
    variables = jax.device_get(state.variables)
    precise = precise_statistics(model, variables, config, steps_per_epoch)
    row = {"epoch": (step + 1) // steps_per_epoch, "step": step + 1,
           "train_top1_this_epoch": metrics.to_floats(window)["top1"]}
    window = None
    for variant in VARIANTS:
      result = evaluate.evaluate(eval_step, jax.device_put(substituted(variables, precise,
                                                                       variant), replicated),
                                 config, mesh)
      row[variant] = {"val_top1": result["top1"], "val_loss": result["loss"]}
    epochs.append(row)
    print(f"epoch {row['epoch']}: train top-1 {100 * row['train_top1_this_epoch']:.2f}%; val "
          "top-1 / loss with " + ", ".join(
              f"{v}: {100 * row[v]['val_top1']:.2f}% / {row[v]['val_loss']:.4g}"
              for v in VARIANTS), flush=True)
  harness.write_report(args.output, {
      "benchmark": "demo_batchnorm", "config": os.path.relpath(CONFIG, REPO),
      "machine": harness.machine(os.cpu_count() or 1), "epochs": epochs})


if __name__ == "__main__":
  main()
