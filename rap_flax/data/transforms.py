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

from rap_flax.data.base import (BRIGHTNESS, CIFAR_PAD, IMAGENET_MEAN, IMAGENET_STD,
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


def resize_like_pil(image: tf.Tensor, height, width) -> tf.Tensor:
  """PIL-style bilinear resize (antialiased when shrinking), rounded to integers like uint8."""
  resized = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
  return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


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

  def train(encoded, uniforms):
    shape = tf.image.extract_jpeg_shape(encoded)
    box = random_resized_crop_box(shape[0], shape[1], uniforms[:4 * RRC_ATTEMPTS])
    crop = tf.image.decode_and_crop_jpeg(encoded, box, channels=3,
                                         dct_method="INTEGER_ACCURATE")
    image = random_flip(resize_like_pil(crop, size, size), uniforms[4 * RRC_ATTEMPTS])
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
