"""A training workdir's checkpoints (`WORKDIR/checkpoints`, orbax): the one module that
writes and reads them, for training (the train state) and for loading weights (variables).

The last k checkpoints are kept, and the best by validation top-1.

Every checkpoint stores the train state (step, params, BatchNorm statistics, optimizer state)
and, as metadata, the model it belongs to (`rap_flax.spec.ModelSpec`) and the best validation
top-1 so far. Checkpoints written after an evaluation carry that evaluation's top-1 as their
orbax metric, which is how orbax keeps the best one beyond the last k. Orbax writes each step
into a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoint intact.

A step that cannot be read (truncated files, a lost metadata file, a bad disk) is skipped
with one warning line for the newest readable one, unless that exact step was asked for. A
resumed run moves the damaged steps newer than its starting point to `damaged-STEP/`
(never deleting them) so that it can write those steps again.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from rap_flax import files
from rap_flax import spec as spec_lib

METRIC = "val_top1"
CHECKPOINT_CHOICES = ("best", "latest")
_T = TypeVar("_T")
SUBDIRECTORY = "checkpoints"


class ArchitectureMismatchError(ValueError):
  """The workdir holds checkpoints of a different model than the config describes."""


class DamagedCheckpointError(ValueError):
  """No readable checkpoint (or the one explicitly asked for cannot be read)."""


class NoCheckpointError(FileNotFoundError):
  """The workdir holds no checkpoints."""


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, SUBDIRECTORY))


def step_directory(path: str) -> tuple[str, int] | None:
  """(workdir, step) for WORKDIR/checkpoints/STEP[/state], else None."""
  parts = os.path.normpath(path).split(os.sep)
  if parts and parts[-1] == "state":
    parts = parts[:-1]
  if len(parts) >= 2 and parts[-1].isdigit() and parts[-2] == SUBDIRECTORY:
    return os.sep.join(parts[:-2]) or os.sep, int(parts[-1])
  return None


def _best_fn(metrics: dict[str, float]) -> float:
  return metrics[METRIC]


def _cause(error: BaseException) -> str:
  """The innermost cause of an orbax failure, on one line."""
  while error.__cause__ is not None or (error.__context__ is not None
                                        and not error.__suppress_context__):
    error = error.__cause__ or error.__context__
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax and asyncio log a traceback per failed read; the caller reports it on one line."""
  loggers = [std_logging.getLogger(name) for name in ("absl", "asyncio", "orbax")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _closed_loop_error(error: BaseException | None) -> bool:
  return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _ignore_late_orbax_callbacks() -> None:
  """After a failed read or write, orbax's still-pending tensorstore operations complete into
  its closed event loop, and each reports "RuntimeError: Event loop is closed" (as an
  unraisable exception or through sys.excepthook, after reads and writes alike: a traceback
  on stderr, possibly at exit). The failure itself reaches the caller; those are dropped."""
  if getattr(sys.unraisablehook, "drops_closed_loop_errors", False):
    return
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def unraisable_hook(unraisable):
    if not _closed_loop_error(unraisable.exc_value):
      previous_unraisable(unraisable)

  def except_hook(kind, value, traceback):
    if not _closed_loop_error(value):
      previous_except(kind, value, traceback)

  unraisable_hook.drops_closed_loop_errors = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
  std_logging.getLogger("asyncio").addFilter(_drop_orbax_task_errors)


def _drop_orbax_task_errors(record: std_logging.LogRecord) -> bool:
  """A failed write leaves orbax's other serialization tasks, and the tensorstore futures they
  awaited, failed and unawaited; asyncio logs each ("Task / Future exception was never
  retrieved") whenever it collects them, often after the failure has been reported. Those
  records are dropped: a task's by its traceback through orbax, a tensorstore future's (raised
  in C++, no traceback) by tensorstore's payload in its message. Others pass."""
  error = record.exc_info[1] if record.exc_info else None
  if error is None:
    return True
  traceback = error.__traceback__
  if traceback is None:
    return "[tensorstore_spec=" not in str(error)
  while traceback is not None:
    if f"{os.sep}orbax{os.sep}" in traceback.tb_frame.f_code.co_filename:
      return False
    traceback = traceback.tb_next
  return True


class Checkpoints:
  """Saves and restores train states (any pytree with a `step`) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), SUBDIRECTORY)
    if read_only and not os.path.isdir(self.directory):
      raise NoCheckpointError(f"No checkpoints in {workdir}: it has no checkpoints/ directory. "
                              "Train first (python train.py --config=... --workdir=...).")
    self._read_only = read_only
    # Before any read or write: the late callbacks of a failed one can fire before its
    # exception reaches the caller, which reports it once.
    _ignore_late_orbax_callbacks()
    policy = ocp.checkpoint_managers
    self._options = ocp.CheckpointManagerOptions(
        best_fn=_best_fn, best_mode="max", read_only=read_only, create=not read_only,
        # A save cut short (a full disk, kill -9) leaves a temporary directory; the workdir
        # lock guarantees that no other trainer is writing it.
        cleanup_tmp_directories=not read_only,
        save_interval_steps=0 if read_only else 1,
        preservation_policy=policy.AnyPreservationPolicy([
            policy.LatestN(n=keep),
            policy.BestN(get_metric_fn=_best_fn, n=1, keep_checkpoints_without_metrics=False),
        ]))
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    with _quiet_orbax():
      return ocp.CheckpointManager(self.directory, options=self._options,
                                   item_handlers={"state": ocp.PyTreeCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best validation top-1 (the latest such step on ties)."""
    with _quiet_orbax():
      try:
        return self._manager.best_step()
      except Exception:  # pylint: disable=broad-except  # damaged metrics: no best known
        return None

  def _metadata(self, step: int) -> dict[str, Any]:
    metadata = self._manager.metadata(step)
    custom = dict(getattr(metadata, "custom_metadata", None) or {})
    if not custom.get("model"):
      raise DamagedCheckpointError("its metadata (_CHECKPOINT_METADATA) is missing or empty")
    return custom

  def candidates(self, which: str) -> list[int]:
    """Steps to try for "best" / "latest" / "STEP", in order of preference."""
    steps = self.steps()
    if not steps:
      raise NoCheckpointError(f"No checkpoints in {self.directory}. Train first (python "
                              "train.py --config=... --workdir=...).")
    newest_first = steps[::-1]
    if which == "latest":
      return newest_first
    if which == "best":
      best = self.best_step()
      return ([best] if best is not None else []) + [s for s in newest_first if s != best]
    if not str(which).isdigit():
      raise ValueError(f"checkpoint={which!r}: use one of {CHECKPOINT_CHOICES} or a step "
                       "number.")
    if int(which) not in steps:
      raise ValueError(f"No checkpoint of step {which} in {self.directory}; saved steps: "
                       f"{steps}.")
    return [int(which)]

  def _first_readable(self, which: str, read: Callable[[int], _T]) -> tuple[int, _T]:
    candidates = self.candidates(which)
    explicit = str(which).isdigit()
    for step in candidates:
      try:
        with _quiet_orbax():
          return step, read(step)
      except ArchitectureMismatchError:
        raise
      except Exception as error:  # pylint: disable=broad-except  # any damage: next step
        if explicit:
          raise DamagedCheckpointError(
              f"Checkpoint step {step} in {self.directory} cannot be read ({_cause(error)}). "
              f"Choose another step (saved: {self.steps()}) or --checkpoint=latest.") from error
        logging.warning("Checkpoint step %d in %s cannot be read (%s); trying an older one.",
                        step, self.directory, _cause(error))
    raise DamagedCheckpointError(f"None of the checkpoints {candidates} in {self.directory} can "
                                 "be read; start from a fresh --workdir.")

  def save(self, state: Any, *, model_spec: spec_lib.ModelSpec,
           best_val_top1: float | None, val_top1: float | None = None) -> bool:
    """Starts an asynchronous save of `state` at its step (`val_top1`: if just evaluated);
    False if that step is saved already."""
    step = int(jax.device_get(state.step))
    if step in self._manager.all_steps():
      return False
    # Orbax writes its metadata files with plain Python writes; this also finishes the
    # previous save.
    with files.naming_failed_writes(self.directory):
      self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)),
          metrics=None if val_top1 is None else {METRIC: float(val_top1)},
          custom_metadata={"model": model_spec.to_dict(), "best_val_top1": best_val_top1},
          force=True)
    return True

  def _check_model(self, step: int, model_spec: spec_lib.ModelSpec) -> dict[str, Any]:
    metadata = self._metadata(step)
    try:
      stored = spec_lib.ModelSpec.from_dict(metadata["model"])
    except (TypeError, ValueError) as error:
      raise DamagedCheckpointError(f"its stored model is unreadable ({error})") from error
    if stored != model_spec:
      differences = {k: (v, model_spec.to_dict()[k]) for k, v in stored.to_dict().items()
                     if model_spec.to_dict()[k] != v}
      raise ArchitectureMismatchError(
          f"{self.directory} holds checkpoints of another model; stored vs requested: "
          f"{differences}. Use a fresh --workdir, or set the config's model fields to the "
          "stored ones.")
    return metadata

  def restore(self, abstract_state: _T, model_spec: spec_lib.ModelSpec,
              which: str = "latest") -> tuple[_T, float | None]:
    """The newest readable state onto the shapes, dtypes and shardings of `abstract_state`,
    and the best validation top-1 recorded with it."""

    def read(step):
      metadata = self._check_model(step, model_spec)
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(abstract_state, restore_args=(
              ocp.checkpoint_utils.construct_restore_args(abstract_state)))))
      return restored.state, metadata.get("best_val_top1")

    step, (state, best_val_top1) = self._first_readable(which, read)
    logging.info("Restored checkpoint of step %d from %s.", step, self.directory)
    if not self._read_only:
      self._move_aside_newer_than(step)
    return state, best_val_top1

  def restore_variables(self, which: str = "best"
                        ) -> tuple[int, dict[str, Any], spec_lib.ModelSpec]:
    """(step, {"params", "batch_stats"} as numpy, the stored ModelSpec) of `which`."""

    def read(step):
      metadata = self._metadata(step)
      tree = self._manager.item_metadata(step).state
      target = {c: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[c])
                for c in ("params", "batch_stats")}
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)))
      return dict(restored.state), spec_lib.ModelSpec.from_dict(metadata["model"])

    step, (variables, model_spec) = self._first_readable(which, read)
    logging.info("Restored the variables of step %d from %s.", step, self.directory)
    return step, variables, model_spec

  def _move_aside_newer_than(self, step: int) -> None:
    newer = [s for s in self.steps() if s > step]
    if not newer:
      return
    self._manager.close()
    for damaged in newer:
      target = os.path.join(self.directory, f"damaged-{damaged}")
      os.replace(os.path.join(self.directory, str(damaged)), target)
      logging.warning("Moved the unreadable checkpoint step %d to %s; training resumes from "
                      "step %d.", damaged, target, step)
    self._manager = self._open()

  def wait_until_finished(self) -> None:
    with files.naming_failed_writes(self.directory):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases orbax's threads."""
    with files.naming_failed_writes(self.directory):
      self._manager.close()

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
