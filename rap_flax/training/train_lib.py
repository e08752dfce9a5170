"""Training loop: `train_and_evaluate(config, workdir)`.

One jitted train step runs over all devices of all hosts (see parallel.py). The loop resumes
from the latest checkpoint in `workdir`, and since the input pipeline yields the same batch
for a given step however it was started, a resumed run follows the trajectory of an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from rap_flax import data, files, weights
from rap_flax.errors import Interrupted, Preempted
from rap_flax.training import config_lib, evaluate, metrics, parallel, workdir_lock
from rap_flax.training import program as program_lib
from rap_flax.training.train_state import TrainState
from rap_flax.weights.workdir import Checkpoints

@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


def _divergence_error(step: int, what: str, last_good: int | None) -> FloatingPointError:
  kept = (f"The last good checkpoint (step {last_good}) is left untouched"
          if last_good is not None else "No checkpoint was written")
  return FloatingPointError(
      f"Training diverged: {what} at step {step}. {kept}. Lower --config.learning_rate "
      "(or add --config.warmup_epochs), and if --config.model.dtype=bfloat16 is on, try "
      "float32.")


class _Preemption:
  """Tells whether this job was asked to stop (SIGTERM, or SIGINT: Ctrl-C), consistently
  across hosts.

  A single process handles both signals itself; a second Ctrl-C stops at once. With several
  processes, jax's preemption service (started by jax.distributed.initialize) catches
  SIGTERM on any host and picks a step at which all hosts stop together; Ctrl-C there stops
  at once, without a checkpoint.
  """

  def __init__(self):
    self.signal: int | None = None

  @contextlib.contextmanager
  def installed(self) -> Iterator[_Preemption]:
    if jax.process_count() > 1:
      yield self
      return
    previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: stop now
      logging.warning("Ctrl-C received: saving a checkpoint and stopping (Ctrl-C again to stop "
                      "at once).")
    else:
      logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.signal = signum

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signal is not None

  def error(self, step: int, num_train_steps: int) -> Preempted:
    if self.signal == signal.SIGINT:
      return Interrupted(f"Stopped at step {step} of {num_train_steps} on Ctrl-C; checkpoint "
                         "saved. Run the same command to resume.")
    return Preempted(f"Stopped at step {step} of {num_train_steps} for preemption (SIGTERM); "
                     "checkpoint saved. Run the same command to resume.")


def _log_model_overview(state: TrainState, model, image_size: int, workdir: str) -> None:
  """The parameter table goes to WORKDIR/parameters.txt, a one-line summary to the log."""
  table = parameter_overview.get_parameter_overview(state.params, include_stats=False)
  path = os.path.join(workdir, "parameters.txt")
  with files.atomic_output(path) as tmp, open(tmp, "w") as f:
    f.write(table + "\n")
  count = sum(x.size for x in jax.tree.leaves(state.params))
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  cost = jax.jit(functools.partial(model.apply, train=False)).lower(
      state.variables, images).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (f", {cost['flops'] / 1e9:.3g} GFLOPs per {image_size}px image (XLA count)"
           if cost and "flops" in cost else "")
  logging.info("Model: %s parameters in %d arrays%s; table in %s.", f"{count:,}",
               len(jax.tree.leaves(state.params)), flops, path)


def _hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = config_lib.flatten(config)
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def _enable_compilation_cache(config: ml_collections.ConfigDict, workdir: str) -> None:
  if config.compilation_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "compilation_cache"))


def _initial_state(program: program_lib.TrainProgram) -> TrainState:
  """A fresh state, with the weights of config.init_from where they fit (fine-tuning)."""
  config, state = program.config, program.initial_state()
  if not config.init_from:
    return state
  matched = weights.match_variables(config.init_from, program.model,
                                    config.init_from_checkpoint, config.init_from_exclude or None)
  flat = weights.flatten(jax.device_get(state.variables))
  flat.update(matched.variables)
  variables = jax.device_put(weights.unflatten(flat), program.replicated)
  logging.info("Initialised %d of %d variables from %s.", len(matched.variables), len(flat),
               config.init_from)
  for name in matched.reinitialised:
    logging.warning("Re-initialised (not taken from %s): %s", config.init_from, name)
  if matched.unused:
    logging.warning("Unused in %s (%d): %s", config.init_from, len(matched.unused),
                    ", ".join(matched.unused[:8]) + (" ..." if len(matched.unused) > 8 else ""))
  return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, checkpoints.

  Writes TensorBoard events and checkpoints to `workdir` and, at the end, results.json with
  the final and best validation numbers. Returns the final train state; raises Preempted
  when stopped by SIGTERM (Interrupted on Ctrl-C) after writing a checkpoint, and
  rap_flax.locks.LockedError while another trainer holds `workdir`.
  """
  config_lib.validate_config(config)
  workdir = os.path.abspath(files.expand(workdir))
  with workdir_lock.hold(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  mesh = parallel.create_mesh()
  local_batch_size = parallel.per_host_batch_size(config.batch_size)
  parallel.per_host_batch_size(config.eval_batch_size, "eval_batch_size")

  info = data.get_dataset_info(config.data)
  program = program_lib.build(config, mesh, info)
  model, model_spec = program.model, program.model.model_spec
  steps_per_epoch, num_train_steps = program.steps_per_epoch, program.num_train_steps
  results_path = os.path.join(workdir, "results.json")
  _enable_compilation_cache(config, workdir)

  with Checkpoints(workdir, keep=config.keep_checkpoints) as checkpoints:
    if checkpoints.steps():
      state, best_val_top1 = checkpoints.restore(program.abstract_state(), model_spec)
    else:
      state, best_val_top1 = _initial_state(program), None
    start_step = int(jax.device_get(state.step))
    if start_step >= num_train_steps and os.path.exists(results_path):
      logging.info("%s is already complete at step %d (results in %s); nothing to do.",
                   workdir, start_step, results_path)
      return state

    writer = metrics.create_writer(workdir)
    if start_step == 0:
      writer.write_hparams(_hparams(config))
    if jax.process_index() == 0:
      config_lib.record_config(config, workdir)
    logging.info("%s + %s on %s: %d classes, %d train / %d eval images at %dpx; %d "
                 "steps/epoch, %d steps in all, starting at %d; %d device(s) on %d host(s).",
                 model_spec.arch, model_spec.attention, info.name, info.num_classes,
                 info.num_train, info.num_eval, info.image_size, steps_per_epoch,
                 num_train_steps, start_step, jax.device_count(), jax.process_count())
    if jax.process_index() == 0:
      _log_model_overview(state, model, info.image_size, workdir)

    loop = _Loop(program, checkpoints, writer, best_val_top1)
    train_iter = data.create_train_iterator(config.data, batch_size=local_batch_size,
                                            start_step=start_step, seed=config.seed)
    try:
      state, final_eval = loop.run(state, train_iter)
    finally:
      writer.flush()
    if final_eval is None:  # the last step was reached before this run: evaluate it
      final_eval = loop.evaluate(state, start_step)
    checkpoints.wait_until_finished()
    best_step = checkpoints.best_step()
    evaluate.write_json(results_path, {
        "step": num_train_steps, "final": final_eval, "best_val_top1": loop.best_val_top1,
        "best_step": best_step})
  logging.info("Done: best val top-1 %.2f%% (step %s), final %.2f%% (step %d); results in %s; "
               "curves: tensorboard --logdir %s", 100 * loop.best_val_top1, best_step,
               100 * final_eval["top1"], num_train_steps, results_path, workdir)
  return state


class _Loop:
  """The step loop: train, log, evaluate, checkpoint, and stop on divergence or preemption."""

  def __init__(self, program: program_lib.TrainProgram, checkpoints, writer, best_val_top1):
    self.config, self.mesh = program.config, program.mesh
    self.model_spec = program.model.model_spec
    self.learning_rate_fn = program.learning_rate_fn
    self.checkpoints, self.writer = checkpoints, writer
    self.steps_per_epoch, self.num_train_steps = program.steps_per_epoch, program.num_train_steps
    self.best_val_top1 = best_val_top1
    self.train_step, self.eval_step = program.train_step, program.eval_step
    self.batch_sharding = parallel.data_sharding(program.mesh)
    self._unchecked: tuple[int, metrics.Metrics] | None = None  # Loss not yet checked.
    self._last_train_top1: float | None = None
    self._noted_lagging_statistics = False

  def run(self, state: TrainState, train_iter) -> tuple[TrainState, dict[str, Any] | None]:
    """Trains to the last step; returns the state and the last evaluation (None if there
    was nothing left to do). Raises Preempted after checkpointing on SIGTERM."""
    config = self.config
    start_step = int(jax.device_get(state.step))
    eval_every_steps = config.eval_every_epochs * self.steps_per_epoch
    progress = metrics.Progress(self.num_train_steps, config.batch_size, start_step)
    preemption = _Preemption()
    window: metrics.Metrics | None = None
    final_eval = None
    logging.info("Checkpoints go to %s after every evaluation and every %d steps (the last %d "
                 "and the best are kept).", self.checkpoints.directory,
                 config.checkpoint_every_steps, config.keep_checkpoints)
    with preemption.installed():
      for step in range(start_step, self.num_train_steps):
        batch = parallel.make_global_batch(progress.next_batch(train_iter), self.batch_sharding)
        state, step_metrics = self.train_step(state, batch)
        done = step + 1
        if step == start_step:  # compile + first step: kept out of the rates and the ETA
          jax.block_until_ready(step_metrics)
          progress.restart(done)
        # Check the previous step's loss: waits for that step only, this one keeps running.
        self._check_loss()
        self._unchecked = (done, step_metrics)
        window = step_metrics if window is None else window.merge(step_metrics)

        if done % config.log_every_steps == 0 or done == self.num_train_steps:
          self._check_loss()
          scalars = {f"train_{k}": v for k, v in metrics.to_floats(window).items()}
          scalars["learning_rate"] = float(self.learning_rate_fn(done - 1))
          self._last_train_top1 = scalars["train_top1"]
          logging.info("Step %d (epoch %.2f): train loss %.4f, top-1 %.2f%%, top-5 %.2f%%, "
                       "learning rate %.4g", done, done / self.steps_per_epoch,
                       scalars["train_loss"], 100 * scalars["train_top1"],
                       100 * scalars["train_top5"], scalars["learning_rate"])
          self.writer.write_scalars(done, {**scalars, **progress(done)})
          window = None

        if done % eval_every_steps == 0 or done == self.num_train_steps:
          progress.pause()
          final_eval = self.evaluate(state, done)
          self._save(state, val_top1=final_eval["top1"])
          progress.resume()
        elif done % config.checkpoint_every_steps == 0:
          self._save(state, announce=True)

        if preemption.reached(done):
          self._save(state, announce=True)
          self.checkpoints.wait_until_finished()
          raise preemption.error(done, self.num_train_steps)
    return state, final_eval

  def evaluate(self, state: TrainState, step: int) -> dict[str, Any]:
    result = evaluate.evaluate(self.eval_step, state.variables, self.config, self.mesh)
    if self.best_val_top1 is None or result["top1"] > self.best_val_top1:
      self.best_val_top1 = result["top1"]
    self.writer.write_scalars(step, {f"val_{k}": v for k, v in result.items()}
                              | {"val_best_top1": self.best_val_top1})
    logging.info("Step %d (epoch %.2f): val top-1 %.2f%%, top-5 %.2f%%, loss %.4f "
                 "(best top-1 %.2f%%).", step, step / self.steps_per_epoch,
                 100 * result["top1"], 100 * result["top5"], result["loss"],
                 100 * self.best_val_top1)
    if not self._noted_lagging_statistics and (
        result["top1"] < 0.5 * (self._last_train_top1 or 0.0)):
      self._noted_lagging_statistics = True
      logging.info("(Validation runs BatchNorm on its running statistics, which lag behind "
                   "weights that still change fast, so early validation can trail training "
                   "by far: see 'Early validation' in the README.)")
    return result

  def _check_loss(self) -> None:
    if self._unchecked is not None:
      step, step_metrics = self._unchecked
      loss = float(step_metrics.loss.compute())
      if not math.isfinite(loss):
        raise _divergence_error(step, f"the loss is {loss}", self.checkpoints.latest_step())
      self._unchecked = None

  def _save(self, state: TrainState, val_top1: float | None = None,
            announce: bool = False) -> None:
    """Saves `state` after making sure that it is a good one (finite loss and variables).
    Saves after an evaluation go unannounced (the log said where checkpoints go)."""
    self._check_loss()
    if not bool(_all_finite(state.variables)):
      raise _divergence_error(int(jax.device_get(state.step)),
                              "the parameters became non-finite",
                              self.checkpoints.latest_step())
    saved = self.checkpoints.save(state, model_spec=self.model_spec,
                                  best_val_top1=self.best_val_top1, val_top1=val_top1)
    if saved and announce:
      logging.info("Saving checkpoint at step %d to %s.", int(jax.device_get(state.step)),
                   self.checkpoints.directory)
