"""Random images and labels, generated per example index: for benchmarks and smoke tests."""

from __future__ import annotations

import numpy as np

from rap_flax.data import config, in_memory

DEFAULT_IMAGE_SIZE = 224
_DATA_SEED = 1234  # The data itself is fixed; config.seed only drives the shuffle order.


def _take_fn(split_id: int, image_size: int, num_classes: int) -> in_memory.TakeFn:
  def take(indices):
    images = np.empty((len(indices), image_size, image_size, 3), np.float32)
    labels = np.empty(len(indices), np.int32)
    for row, index in enumerate(indices):
      rng = np.random.default_rng([_DATA_SEED, split_id, int(index)])
      labels[row] = rng.integers(num_classes)
      rng.random(images.shape[1:], np.float32, out=images[row])
    return images, labels
  return take


def build(data_config) -> in_memory.ArrayDataset:
  image_size = int(data_config.image_size or DEFAULT_IMAGE_SIZE)
  num_classes = int(data_config.synthetic_num_classes)
  num_train = int(data_config.synthetic_num_train)
  num_eval = int(data_config.synthetic_num_eval)
  if num_classes < 1 or num_train < 1 or num_eval < 1:
    raise ValueError(
        "synthetic needs synthetic_num_classes, synthetic_num_train and synthetic_num_eval >= 1, "
        f"got {num_classes}, {num_train}, {num_eval}.")
  train, evaluation = in_memory.named_splits(
      data_config, "synthetic",
      in_memory.ArraySplit(num_train, _take_fn(0, image_size, num_classes)),
      in_memory.ArraySplit(num_eval, _take_fn(1, image_size, num_classes)))
  info = config.DatasetInfo("synthetic", num_classes, train.num_examples, evaluation.num_examples,
                          image_size)
  return in_memory.ArrayDataset(info=info, train=train, eval=evaluation)
