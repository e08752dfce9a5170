"""scikit-learn's 8x8 digits, upscaled to the configured image size: the offline demo dataset."""

from __future__ import annotations

import functools

import numpy as np

from rap_flax.data import config, in_memory

NUM_CLASSES = 10
DEFAULT_IMAGE_SIZE = 32
EVAL_FRACTION = 0.2
_SPLIT_SEED = 0  # The train/val split is fixed: it must not move when the training seed does.


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) matrix of 1-D bilinear weights, half-pixel centres, edges clamped.

  Resizing an image is M @ image @ M.T, the same sampling as PIL/torch bilinear upsampling.
  """
  centres = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
  centres = np.clip(centres, 0, in_size - 1)
  low = np.floor(centres).astype(int)
  high = np.minimum(low + 1, in_size - 1)
  frac = centres - low
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


@functools.lru_cache(maxsize=4)
def _load(image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  grey = digits.images / 16.0  # sklearn stores 0..16.
  resize = bilinear_matrix(8, image_size)
  upscaled = np.einsum("oh,nhw,pw->nop", resize, grey, resize).astype(np.float32)
  np.clip(upscaled, 0.0, 1.0, out=upscaled)
  labels = digits.target.astype(np.int32)
  train_x, eval_x, train_y, eval_y = train_test_split(
      upscaled, labels, test_size=EVAL_FRACTION, stratify=labels, random_state=_SPLIT_SEED)
  return train_x, train_y, eval_x, eval_y


def _take_fn(grey: np.ndarray, labels: np.ndarray) -> in_memory.TakeFn:
  def take(indices):
    return np.repeat(grey[indices][..., None], 3, axis=-1), labels[indices]
  return take


def random_shift(images: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
  """Shifts each image by up to 1/8 of its size (one source pixel) per axis: pad with 0, crop."""
  n, size = images.shape[0], images.shape[1]
  pad = max(1, size // 8)
  offsets = np.floor(uniforms[:, :2] * (2 * pad + 1)).astype(int)  # (n, 2) in [0, 2*pad]
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = offsets[:, 0, None] + np.arange(size)
  cols = offsets[:, 1, None] + np.arange(size)
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def build(data_config) -> in_memory.ArrayDataset:
  image_size = data_config.image_size or DEFAULT_IMAGE_SIZE
  train_x, train_y, eval_x, eval_y = _load(int(image_size))
  train, evaluation = in_memory.named_splits(
      data_config, "digits", in_memory.ArraySplit(len(train_y), _take_fn(train_x, train_y)),
      in_memory.ArraySplit(len(eval_y), _take_fn(eval_x, eval_y)))
  info = config.DatasetInfo("digits", NUM_CLASSES, train.num_examples, evaluation.num_examples,
                          int(image_size))
  return in_memory.ArrayDataset(
      info=info, train=train, eval=evaluation,
      augment=random_shift,
      num_augment_draws=2)
