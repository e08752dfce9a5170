"""Metrics (clu), metric writers and progress reporting.

Metrics are computed from per-example values with the batch's padding mask, so padded
examples count nowhere and evaluation counts are exact across devices and hosts.
"""

# No `from __future__ import annotations`: clu reads the metric classes off __annotations__.

import time
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging
from clu import metrics as clu_metrics


@flax.struct.dataclass
class Metrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  top1: clu_metrics.Average.from_output("top1")
  top5: clu_metrics.Average.from_output("top5")


def per_example_outputs(logits: jax.Array, labels: jax.Array,
                        label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Cross-entropy (optionally label-smoothed, as torch's CrossEntropyLoss) and top-1/top-5 hits."""
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  loss = optax.softmax_cross_entropy(logits, targets)
  # The label is in the top k when fewer than k other logits reach its logit (a tie counts
  # against it, so a constant output scores 0, not 100%); a NaN logit is never a hit.
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits >= label_logit, axis=-1) - 1
  finite = jnp.isfinite(label_logit[:, 0])
  return {"loss": loss, "top1": ((rank < 1) & finite).astype(jnp.float32),
          "top5": ((rank < min(5, num_classes)) & finite).astype(jnp.float32)}


def to_floats(metrics: Metrics) -> dict[str, float]:
  return {name: float(value) for name, value in metrics.compute().items()}


def num_examples(metrics: Metrics) -> int:
  """How many (unmasked) examples went into `metrics`."""
  return int(metrics.loss.count)


class _NoEvents:
  """The writer of processes > 0, and where clu's writers cannot be imported (they need
  tensorflow and tensorboard): the training log has the numbers."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    pass

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def create_writer(workdir: str):
  """TensorBoard events in `workdir`, from process 0. Not clu's default writer: its logging
  half would repeat every metric (and the whole config, as hyperparameters) in the log,
  which has its own readable lines."""
  if jax.process_index() > 0:
    return _NoEvents()
  try:
    from rap_flax.data import tf_import  # noqa: F401  (loads tensorflow quietly)
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    logging.warning("No TensorBoard events (%s); install tensorflow and tensorboard for "
                    "them. Metrics go to the log only.", error)
    return _NoEvents()
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


class Progress:
  """Steps/s, images/s, the share of time spent waiting for input, and the time to the end.

  The input wait is the wall time spent in next() on the training iterator (`next_batch`) as a
  fraction of each logging interval. The step is dispatched asynchronously, so while the host
  waits for the next batch the accelerator runs the step before; a share near 100% means the
  accelerator idles for the host's input pipeline. When it stays at or above `wait_warning` for
  `wait_patience` intervals in a row, one warning says so and what helps.
  """

  def __init__(self, num_train_steps: int, global_batch_size: int, start_step: int,
               wait_warning: float = 0.5, wait_patience: int = 3):
    self._num_train_steps = num_train_steps
    self._batch_size = global_batch_size
    self._last_step = start_step
    self._last_time = time.monotonic()
    self._pause_start = self._last_time
    self._waited = 0.0
    self._wait_warning, self._wait_patience = wait_warning, wait_patience
    self._waiting_intervals = 0
    self._warned = False

  def next_batch(self, iterator):
    """next(iterator), timed as input wait."""
    start = time.monotonic()
    try:
      return next(iterator)
    finally:
      self._waited += time.monotonic() - start

  def __call__(self, step: int) -> dict[str, float]:
    now = time.monotonic()
    elapsed = max(now - self._last_time, 1e-9)
    steps_per_sec = (step - self._last_step) / elapsed
    input_wait = min(self._waited / elapsed, 1.0)
    self._last_step, self._last_time, self._waited = step, now, 0.0
    eta = (self._num_train_steps - step) / max(steps_per_sec, 1e-9)
    logging.info("Step %d/%d: %.2f steps/s, %.1f images/s, input wait %.0f%%, ETA %s", step,
                 self._num_train_steps, steps_per_sec, steps_per_sec * self._batch_size,
                 100 * input_wait, time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400
                 else f"{eta / 86400:.1f} days")
    self._warn_if_input_bound(input_wait)
    return {"steps_per_sec": steps_per_sec, "images_per_sec": steps_per_sec * self._batch_size,
            "input_wait_fraction": input_wait}

  def _warn_if_input_bound(self, input_wait: float) -> None:
    self._waiting_intervals = self._waiting_intervals + 1 if input_wait >= self._wait_warning else 0
    if self._waiting_intervals >= self._wait_patience and not self._warned:
      self._warned = True
      logging.warning(
          "Training waited for input %.0f%% of the time over the last %d logging intervals: the "
          "host's input pipeline is the bottleneck, not the accelerator. What helps: more host "
          "CPU cores for this process (tf.data uses every core it sees), or a copy of the "
          "dataset prepared at a lower resolution.", 100 * input_wait, self._waiting_intervals)

  def restart(self, step: int) -> None:
    """Measures from now and `step` on (after the first step, which includes the compile)."""
    self._last_step, self._last_time, self._waited = step, time.monotonic(), 0.0

  def pause(self) -> None:
    """Excludes time spent outside training (evaluation, checkpointing) from the rates."""
    self._pause_start = time.monotonic()

  def resume(self) -> None:
    self._last_time += time.monotonic() - self._pause_start
