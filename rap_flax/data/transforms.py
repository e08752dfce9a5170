"""The upstream torchvision transforms, written as tf.data-friendly TensorFlow ops.

Each family splits its work into `decode` (runs once per example when the dataset is cached:
encoded bytes -> the image that is kept) and `train` / `eval` (per epoch). PIL rounds to uint8
after every resize, so the resizes here round too (the values stay float32 to skip a cast).
All randomness comes from a stateless key per example, see `example_key`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import tensorflow as tf

from rap_flax.data.transform_constants import (BRIGHTNESS, CIFAR_PAD, IMAGENET_MEAN, IMAGENET_STD,
                                RESIZE_RATIO, RRC_ATTEMPTS, RRC_RATIO, RRC_SCALE)

RRC_LOG_RATIO = (math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]))


def example_key(seed: int, epoch: tf.Tensor | int, position: tf.Tensor) -> tf.Tensor:
  """Stateless RNG key of the example at `position` of `epoch` (shape [2] int64)."""
  key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), epoch)
  return tf.random.experimental.stateless_fold_in(key, position)


def resize_size(crop_size: int) -> int:
  return int(round(crop_size * RESIZE_RATIO))


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Any JPEG/PNG/GIF/BMP -> uint8 (h, w, 3); JPEGs with libjpeg's accurate IDCT, as PIL does."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


RESAMPLE_BLOCK = 8  # outputs per block of the banded resampling matmul (fastest of 4/8/16/32)


def _bilinear_weights(in_size, out_size, mirror):
  """PIL's antialiased bilinear resampling weights along one axis, cut into banded blocks.

  PIL (Resample.c, precompute_coeffs) computes output i from the inputs x around the centre
  c = (i + 0.5) * scale - 0.5, weighted by the triangle 1 - |x - c| / max(scale, 1) and normalised
  to sum 1. A dense (out, in) matrix would be mostly zeros, so the outputs are grouped in blocks
  of RESAMPLE_BLOCK consecutive ones that share a window of `span` consecutive inputs. Returns
  rows (blocks, span), the input index of every window entry, and weights
  (blocks, RESAMPLE_BLOCK, span); padding outputs past out_size repeat the last one. mirror
  reverses the outputs, which flips the image along this axis for free.
  """
  block = RESAMPLE_BLOCK
  num_blocks = (out_size + block - 1) // block
  scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
  support = tf.maximum(scale, 1.0)  # the triangle widens when shrinking: that is the antialiasing
  out_index = tf.minimum(tf.range(num_blocks * block), out_size - 1)
  out_index = tf.where(mirror, out_size - 1 - out_index, out_index)
  centres = tf.reshape((tf.cast(out_index, tf.float32) + 0.5) * scale - 0.5, [num_blocks, block, 1])
  # A block's nonzero weights lie strictly within `support` of its first and last centres.
  span = tf.minimum(tf.cast(tf.math.ceil((block - 1) * scale + 2 * support), tf.int32) + 1, in_size)
  lowest = tf.minimum(centres[:, 0, 0], centres[:, -1, 0]) - support
  first = tf.clip_by_value(tf.cast(tf.math.floor(lowest), tf.int32) + 1, 0, in_size - span)
  rows = first[:, None] + tf.range(span)
  weights = tf.nn.relu(1.0 - tf.abs(tf.cast(rows[:, None, :], tf.float32) - centres) / support)
  # Normalised to 1 + 2**-20 rather than 1: exact halves then round up, as in PIL's fixed point,
  # instead of to even, and no result gets near 255.5.
  return rows, weights / (tf.reduce_sum(weights, axis=2, keepdims=True) * (1 - 2**-20))


def _resample_rows(matrix: tf.Tensor, out_size, mirror=False) -> tf.Tensor:
  """Resamples the leading axis of a (rows, columns) matrix as PIL does; float32, unrounded."""
  rows, weights = _bilinear_weights(tf.shape(matrix)[0], out_size, mirror)
  window = tf.cast(tf.gather(matrix, rows), tf.float32)  # gather first: fewer bytes when uint8
  resampled = tf.reshape(tf.matmul(weights, window), [-1, tf.shape(matrix)[1]])
  if not isinstance(out_size, int) or out_size % RESAMPLE_BLOCK:
    resampled = resampled[:out_size]
  return resampled


def resize_like_pil(image: tf.Tensor, height, width, mirror=False) -> tf.Tensor:
  """PIL's Image.resize(BILINEAR) of an (h, w, c) image, as float32 holding integers 0..255.

  Two separable passes, each a banded matmul over the leading axis, so the horizontal one works
  on the transposed image. PIL rounds to integers after each pass and mostly runs the horizontal
  pass first; here the vertical pass runs first, which saves transposing the larger input, and
  only the result is rounded. That moves some pixels by one level (tests/test_data_transforms.py
  has the figures). mirror flips the result horizontally at no cost. Measured on one core, from
  crops of 120-480 px to 224x224: 0.6 ms per image, against 1.1 ms for TF's own antialiased
  resize (tf.image.resize(antialias=True)), which is no closer to PIL.
  """
  shape = tf.shape(image)
  in_height, in_width, channels = shape[0], shape[1], image.shape[-1]
  swap = lambda x, rows, cols: tf.transpose(tf.reshape(x, [rows, cols, channels]), [1, 0, 2])
  x = _resample_rows(tf.reshape(image, [in_height, in_width * channels]), height)
  x = tf.reshape(swap(x, height, in_width), [in_width, height * channels])
  # Positive weights summing to (just over) 1, see _bilinear_weights: no clipping to 0..255.
  return tf.round(swap(_resample_rows(x, width, mirror), width, height))


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision CenterCrop: offsets int(round((dim - size) / 2))."""
  shape = tf.shape(image)
  top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float32) / 2), tf.int32)
  return image[top:top + size, left:left + size]


def random_flip(image: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
  return tf.cond(uniform < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


def random_crop(image: tf.Tensor, size: int, uniforms: tf.Tensor) -> tf.Tensor:
  """torchvision RandomCrop(size) without padding: offsets uniform over all valid positions."""
  shape = tf.shape(image)
  top = tf.cast(uniforms[0] * tf.cast(shape[0] - size + 1, tf.float32), tf.int32)
  left = tf.cast(uniforms[1] * tf.cast(shape[1] - size + 1, tf.float32), tf.int32)
  return image[top:top + size, left:left + size]


def normalize_imagenet(image_0_255: tf.Tensor, size: int) -> tf.Tensor:
  """(x / 255 - mean) / std of a (size, size, 3) image.

  Written as one multiply-add over rows of size * 3 values with the per-channel constants tiled
  along the row: broadcasting a 3-vector over the innermost axis is several times slower in TF.
  """
  scale = np.tile(1.0 / (255.0 * np.array(IMAGENET_STD)), size).astype(np.float32)
  offset = np.tile(-np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), size).astype(np.float32)
  rows = tf.reshape(image_0_255, [size, size * 3]) * scale + offset
  return tf.reshape(rows, [size, size, 3])


def random_resized_crop_box(height: tf.Tensor, width: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
  """torchvision RandomResizedCrop.get_params: [top, left, h, w] (int32).

  uniforms has 4 * RRC_ATTEMPTS entries: area scale, log aspect ratio, top and left per attempt.
  The first attempt whose box fits wins; if none fits, the central crop with the ratio clamped.
  """
  u = tf.reshape(uniforms, [4, RRC_ATTEMPTS])
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = h_f * w_f * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[0])
  ratio = tf.exp(RRC_LOG_RATIO[0] + (RRC_LOG_RATIO[1] - RRC_LOG_RATIO[0]) * u[1])
  crop_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  tops = tf.cast(u[2] * tf.cast(height - crop_h + 1, tf.float32), tf.int32)
  lefts = tf.cast(u[3] * tf.cast(width - crop_w + 1, tf.float32), tf.int32)
  first = tf.argmax(tf.cast(fits, tf.int32))
  sampled = tf.stack([tops[first], lefts[first], crop_h[first], crop_w[first]])

  min_ratio, max_ratio = RRC_RATIO
  in_ratio = w_f / h_f
  fallback_w = tf.where(in_ratio > max_ratio, tf.cast(tf.round(h_f * max_ratio), tf.int32), width)
  fallback_h = tf.where(in_ratio < min_ratio, tf.cast(tf.round(w_f / min_ratio), tf.int32), height)
  fallback = tf.stack([(height - fallback_h) // 2, (width - fallback_w) // 2, fallback_h,
                       fallback_w])
  return tf.where(tf.reduce_any(fits), sampled, fallback)


@dataclasses.dataclass(frozen=True)
class Transforms:
  """decode: encoded bytes -> stored image; train: (stored, uniforms) -> float32 image;
  eval: encoded bytes -> float32 image. num_uniforms: random numbers train needs."""

  decode: Callable[[tf.Tensor], tf.Tensor]
  train: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
  eval: Callable[[tf.Tensor], tf.Tensor]
  num_uniforms: int


def dogs(size: int) -> Transforms:
  """Resize((256, 256)) then RandomCrop(224) + flip + ColorJitter(brightness) | CenterCrop(224)."""
  resized = resize_size(size)

  def decode(encoded):  # The 256x256 image is what the cache keeps, as uint8.
    return tf.cast(resize_like_pil(decode_rgb(encoded), resized, resized), tf.uint8)

  def train(image, uniforms):
    image = random_crop(tf.cast(image, tf.float32), size, uniforms[0:2])
    image = random_flip(image, uniforms[2])
    factor = 1.0 - BRIGHTNESS + 2 * BRIGHTNESS * uniforms[3]
    return tf.clip_by_value(image * factor, 0.0, 255.0) / 255.0

  def evaluate(encoded):
    return center_crop(tf.cast(decode(encoded), tf.float32), size) / 255.0

  return Transforms(decode, train, evaluate, num_uniforms=4)


def imagenet(size: int) -> Transforms:
  """RandomResizedCrop(224) + flip + Normalize | Resize(256) + CenterCrop(224) + Normalize."""
  short_side = resize_size(size)

  # Decoding at 1/2, 1/4, 1/8 in the DCT domain (decode_and_crop_jpeg's ratio, PIL's draft mode)
  # is left out: it only applies to crops of at least 2 * size on both sides, rare at ImageNet
  # image sizes, and decoding is bound by the entropy decoding of every row above the crop's
  # bottom, which scaling does not skip; measured, it was no faster on the benchmark's images.
  def train(encoded, uniforms):
    shape = tf.image.extract_jpeg_shape(encoded)
    box = random_resized_crop_box(shape[0], shape[1], uniforms[:4 * RRC_ATTEMPTS])
    crop = tf.image.decode_and_crop_jpeg(encoded, box, channels=3,
                                         dct_method="INTEGER_ACCURATE")
    image = resize_like_pil(crop, size, size, mirror=uniforms[4 * RRC_ATTEMPTS] < 0.5)
    return normalize_imagenet(image, size)

  def evaluate(encoded):
    image = decode_rgb(encoded)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    # torchvision Resize(int): the short side becomes short_side, the long one is truncated.
    long_side = lambda long, short: tf.cast(
        tf.cast(short_side, tf.float64) * tf.cast(long, tf.float64) / tf.cast(short, tf.float64),
        tf.int32)
    new_h = tf.where(height <= width, short_side, long_side(height, width))
    new_w = tf.where(height <= width, long_side(width, height), short_side)
    image = center_crop(resize_like_pil(image, new_h, new_w), size)
    return normalize_imagenet(image, size)

  return Transforms(tf.identity, train, evaluate, num_uniforms=4 * RRC_ATTEMPTS + 1)


def cifar(size: int) -> Transforms:
  """RandomCrop(32, padding=4) + flip | nothing; both scaled to [0, 1]."""

  def decode(encoded):
    image = decode_rgb(encoded)
    if size != 32:
      image = tf.cast(resize_like_pil(image, size, size), tf.uint8)
    return image

  def train(image, uniforms):
    padded = tf.pad(tf.cast(image, tf.float32), [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD],
                                                 [0, 0]])
    image = random_flip(random_crop(padded, size, uniforms[0:2]), uniforms[2])
    return image / 255.0

  def evaluate(encoded):
    return tf.cast(decode(encoded), tf.float32) / 255.0

  return Transforms(decode, train, evaluate, num_uniforms=3)


FAMILIES = {"dogs": dogs, "imagenet": imagenet, "cifar": cifar}
