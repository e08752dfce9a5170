"""Pipelines for datasets that live in host memory as numpy arrays (digits, synthetic).

No tensorflow: these datasets are what the demo and the benchmarks use on machines without it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from rap_flax.data import config, hosts, padding, randomness

# example indices -> (images float32 (n, S, S, 3), labels int32 (n,))
TakeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# (images, uniforms of shape (n, num_augment_draws)) -> augmented images
AugmentFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  num_examples: int
  take: TakeFn


SPLIT_NAMES = ("train", "validation")


def named_splits(data_config, dataset: str, train: ArraySplit,
                 validation: ArraySplit) -> tuple[ArraySplit, ArraySplit]:
  """(train, eval) as config.data.train_split / eval_split name them ("" = the default):
  e.g. eval_split="train" evaluates, or calibrates an int8 export on, the training images
  without their augmentation."""
  splits = dict(zip(SPLIT_NAMES, (train, validation)))
  chosen = []
  for field, default in (("train_split", "train"), ("eval_split", "validation")):
    name = data_config[field] or default
    if name not in splits:
      raise ValueError(f"config.data.{field}={name!r}: {dataset} has the splits "
                       f"{', '.join(SPLIT_NAMES)}.")
    chosen.append(splits[name])
  return chosen[0], chosen[1]


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  info: config.DatasetInfo
  train: ArraySplit
  eval: ArraySplit
  augment: AugmentFn | None = None
  num_augment_draws: int = 0

  def train_iterator(self, batch_size: int, start_step: int, seed: int,
                     shard: hosts.HostShard) -> Iterator[padding.Batch]:
    host = shard.train_range(self.train.num_examples)
    steps_per_epoch = hosts.train_steps_per_epoch(len(host), batch_size, self.info.name)
    return _train_batches(self, batch_size, start_step, seed, shard, host, steps_per_epoch)

  def eval_iterator(self, batch_size: int, shard: hosts.HostShard) -> Iterator[padding.Batch]:
    host = shard.eval_range(self.eval.num_examples)

    def batches():
      for start in range(host.start, host.stop, batch_size):
        images, labels = self.eval.take(np.arange(start, min(start + batch_size, host.stop)))
        yield {"image": images, "label": labels}

    return padding.pad_eval_batches(
        batches(), batch_size, shard.num_eval_batches(self.eval.num_examples, batch_size),
        padding.example_shapes(self.info.image_size))


def _train_batches(dataset, batch_size, start_step, seed, shard, host, steps_per_epoch):
  epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
  mask = np.ones(batch_size, bool)
  while True:
    order = randomness.epoch_permutation(seed, epoch, shard, len(host))
    for step in range(step_in_epoch, steps_per_epoch):
      positions = np.arange(step * batch_size, (step + 1) * batch_size)
      images, labels = dataset.train.take(host.start + order[positions])
      if dataset.augment is not None:
        uniforms = randomness.example_uniforms(seed, epoch, positions, dataset.num_augment_draws)
        images = dataset.augment(images, uniforms)
      yield {"image": images, "label": labels, "mask": mask}
    epoch, step_in_epoch = epoch + 1, 0
