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
  """Steps/s, images/s and the estimated time to the end of training."""

  def __init__(self, num_train_steps: int, global_batch_size: int, start_step: int):
    self._num_train_steps = num_train_steps
    self._batch_size = global_batch_size
    self._last_step = start_step
    self._last_time = time.monotonic()
    self._pause_start = self._last_time

  def __call__(self, step: int) -> dict[str, float]:
    now = time.monotonic()
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self._num_train_steps - step) / max(steps_per_sec, 1e-9)
    logging.info("Step %d/%d: %.2f steps/s, %.1f images/s, ETA %s", step,
                 self._num_train_steps, steps_per_sec, steps_per_sec * self._batch_size,
                 time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400
                 else f"{eta / 86400:.1f} days")
    return {"steps_per_sec": steps_per_sec, "images_per_sec": steps_per_sec * self._batch_size}

  def restart(self, step: int) -> None:
    """Measures from now and `step` on (after the first step, which includes the compile)."""
    self._last_step, self._last_time = step, time.monotonic()

  def pause(self) -> None:
    """Excludes time spent outside training (evaluation, checkpointing) from the rates."""
    self._pause_start = time.monotonic()

  def resume(self) -> None:
    self._last_time += time.monotonic() - self._pause_start
