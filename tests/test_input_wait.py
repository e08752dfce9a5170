"""The trainer reports the share of time it waits for input, and warns when it stays high.

Training runs in this process (the tiny digits run of test_train), its iterator slowed down or
not; the log lines and the TensorBoard scalars come from metrics.Progress.
"""

import logging
import time

from rap_flax import data
from rap_flax.data.tf_import import tf
from rap_flax.training import train_lib
from tests.test_train import tiny_config

WARNING = "Training waited for input"


def train(tmp_path, monkeypatch, caplog, seconds_per_batch: float):
  create = data.create_train_iterator

  def slowed(*args, **kwargs):
    for batch in create(*args, **kwargs):
      time.sleep(seconds_per_batch)
      yield batch

  monkeypatch.setattr(data, "create_train_iterator", slowed)
  config = tiny_config(**{"num_train_steps": 10, "log_every_steps": 2,
                          "model.depthwise_implementation": "grouped"})
  with caplog.at_level(logging.INFO):
    train_lib.train_and_evaluate(config, str(tmp_path / "workdir"))
  return [record.getMessage() for record in caplog.records]


def input_waits(messages):
  return [float(m.split("input wait ")[1].split("%")[0]) for m in messages if "input wait" in m]


def test_a_slow_iterator_is_reported_and_warned_about_once(tmp_path, monkeypatch, caplog):
  messages = train(tmp_path, monkeypatch, caplog, seconds_per_batch=0.5)
  waits = input_waits(messages)
  # Logged at steps 2, 4, ..., 10; the first interval also holds one-off work (the learning-rate
  # schedule's first evaluation compiles).
  assert len(waits) == 5 and min(waits[1:]) > 60, waits
  warnings = [m for m in messages if WARNING in m]
  assert len(warnings) == 1 and "more host CPU cores" in warnings[0], warnings
  assert [round(100 * f) for f in tensorboard_scalars(tmp_path / "workdir",
                                                      "input_wait_fraction")] == waits


def tensorboard_scalars(workdir, tag):
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  events.Reload()
  return [float(tf.make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)]


def test_a_fast_iterator_is_not_warned_about(tmp_path, monkeypatch, caplog):
  messages = train(tmp_path, monkeypatch, caplog, seconds_per_batch=0.0)
  waits = input_waits(messages)
  assert waits and max(waits) < 50, waits
  assert not [m for m in messages if WARNING in m]
