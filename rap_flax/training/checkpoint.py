"""Orbax checkpoints of the train state: the last k and the best by validation top-1.

Every checkpoint stores the train state (step, params, BatchNorm stats, optimizer state) and,
as metadata, the model it belongs to and the best validation top-1 so far. Checkpoints written
after an evaluation carry that evaluation's top-1 as their orbax metric, which is how orbax
keeps the best one beyond the last k. Orbax writes each step into a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from rap_flax.training.train_state import TrainState

METRIC = "val_top1"
_NO_CHECKPOINTS = ("No checkpoints in {}; train first with `python train.py --config=... "
                   "--workdir=...`, or evaluate a PyTorch file with --torch_checkpoint.")


class ArchitectureMismatchError(ValueError):
  """The workdir holds checkpoints of a different model than the config describes."""


def _best_fn(metrics: dict[str, float]) -> float:
  return metrics[METRIC]


class Checkpoints:
  """Saves and restores TrainStates under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(_NO_CHECKPOINTS.format(self.directory))
    policy = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_fn, best_mode="max", read_only=read_only, create=not read_only,
        save_interval_steps=0 if read_only else 1,
        preservation_policy=policy.AnyPreservationPolicy([
            policy.LatestN(n=keep),
            policy.BestN(get_metric_fn=_best_fn, n=1, keep_checkpoints_without_metrics=False),
        ]))
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.PyTreeCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best validation top-1 (the latest such step on ties)."""
    return self._manager.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def check_not_empty(self) -> None:
    if not self.all_steps():
      raise FileNotFoundError(_NO_CHECKPOINTS.format(self.directory))

  def metadata(self, step: int) -> dict[str, Any]:
    return dict(self._manager.metadata(step).custom_metadata or {})

  def save(self, state: TrainState, *, model: dict[str, Any], best_val_top1: float | None,
           val_top1: float | None = None) -> None:
    """Starts an asynchronous save of `state` at its step; `val_top1` if just evaluated."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return
    self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)),
        metrics=None if val_top1 is None else {METRIC: float(val_top1)},
        custom_metadata={"model": model, "best_val_top1": best_val_top1}, force=True)
    logging.info("Saving checkpoint at step %d to %s.", step, self.directory)

  def check_model(self, step: int, model: dict[str, Any]) -> None:
    stored = self.metadata(step).get("model")
    if stored != model:
      diff = {k: (stored.get(k), v) for k, v in model.items()
              if stored and stored.get(k) != v} if stored else model
      raise ArchitectureMismatchError(
          f"{self.directory} holds checkpoints of another model: {stored}; the config asks "
          f"for {model} (stored vs requested: {diff}). Use a fresh --workdir, or set the "
          "config's model fields to those of the checkpoints.")

  def restore(self, abstract_state: TrainState, step: int, model: dict[str, Any]) -> TrainState:
    """Restores `step` onto the shapes, dtypes and shardings of `abstract_state`."""
    self.check_model(step, model)
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))))
    logging.info("Restored checkpoint of step %d from %s.", step, self.directory)
    return restored.state

  def restore_variables(self, abstract_variables: dict[str, Any], step: int,
                        model: dict[str, Any]) -> dict[str, Any]:
    """Restores only {"params", "batch_stats"} of `step` (for evaluation; no optimizer)."""
    self.check_model(step, model)
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        abstract_variables, partial_restore=True,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables))))
    logging.info("Restored the variables of step %d from %s.", step, self.directory)
    return restored.state

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads."""
    self._manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
