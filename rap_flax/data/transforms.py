"""The upstream torchvision transforms, written as tf.data-friendly TensorFlow ops.

Each family splits its work into `decode` (runs once per example when the dataset is cached:
encoded bytes -> the image that is kept) and `train` / `eval` (per epoch). Images stay uint8
from the decoder to the batch, as in PIL, which rounds to uint8 after every resize; the scaling
to [0, 1] and the mean/std normalisation run on the device (rap_flax.data.model_input). All
randomness comes from a stateless key per example, see `example_key`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from rap_flax.data.tf_import import tf
from rap_flax.data.transform_constants import (BRIGHTNESS, CIFAR_PAD, RESIZE_RATIO, RRC_ATTEMPTS,
                                               RRC_RATIO, RRC_SCALE)

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
# oneDNN compiles a kernel for every new matmul shape and keeps 1024; with the exact window of
# every crop nearly every image brought a new shape, which cost more than the products. Windows
# are rounded up to these multiples (rows of a block's window; columns of a decoded crop), so
# the shapes repeat.
SPAN_STEP = 4
WIDTH_STEP = 16


def _resampling(array_size, crop_start, crop_size, resized_size, out_start, out_size: int,
                mirror):
  """PIL's antialiased bilinear weights along one axis, cut into banded blocks.

  The axis has array_size pixels, of which [crop_start, crop_start + crop_size) are resized to
  resized_size; outputs out_start .. out_start + out_size - 1 of that resize are computed.
  PIL (Resample.c, precompute_coeffs) computes output i from the inputs x around the centre
  c = (i + 0.5) * scale - 0.5, weighted by the triangle 1 - |x - c| / max(scale, 1) and normalised
  to sum 1; inputs outside the crop have no weight. A dense (out, in) matrix would be mostly
  zeros, so the outputs are grouped in blocks of RESAMPLE_BLOCK consecutive ones that share a
  window of `span` consecutive inputs. Returns rows (blocks, span), the input index of every
  window entry, and weights (blocks, RESAMPLE_BLOCK, span); padding outputs past out_size repeat
  the last one. mirror reverses the outputs, which flips the image along this axis for free.
  """
  block = RESAMPLE_BLOCK
  num_blocks = -(-out_size // block)
  scale = tf.cast(crop_size, tf.float32) / tf.cast(resized_size, tf.float32)
  support = tf.maximum(scale, 1.0)  # the triangle widens when shrinking: that is the antialiasing
  out_index = tf.minimum(tf.range(num_blocks * block), out_size - 1)
  out_index = tf.where(mirror, out_size - 1 - out_index, out_index) + out_start
  centres = tf.reshape((tf.cast(out_index, tf.float32) + 0.5) * scale - 0.5
                       + tf.cast(crop_start, tf.float32), [num_blocks, block, 1])
  # A block's nonzero weights lie strictly within `support` of its first and last centres.
  span = tf.cast(tf.math.ceil((block - 1) * scale + 2 * support), tf.int32) + 1
  span = tf.minimum(-(-span // SPAN_STEP) * SPAN_STEP, array_size)
  lowest = tf.minimum(centres[:, 0, 0], centres[:, -1, 0]) - support
  first = tf.clip_by_value(tf.cast(tf.math.floor(lowest), tf.int32) + 1, 0, array_size - span)
  rows = first[:, None] + tf.range(span)
  in_crop = (rows >= crop_start) & (rows < crop_start + crop_size)
  weights = tf.nn.relu(1.0 - tf.abs(tf.cast(rows[:, None, :], tf.float32) - centres) / support)
  weights *= tf.cast(in_crop, tf.float32)[:, None, :]
  # Normalised to 1 + 2**-20 rather than 1: exact halves then round up, as in PIL's fixed point,
  # and no result gets near 255.5.
  return rows, weights / (tf.reduce_sum(weights, axis=2, keepdims=True) * (1 - 2**-20))


def _resample_rows(matrix: tf.Tensor, axis: tuple, out_size: int, mirror=False) -> tf.Tensor:
  """Resamples the leading axis of a (rows, columns) matrix as PIL does; float32, unrounded.

  axis: (crop_start, crop_size, resized_size, out_start) along the rows, see _resampling."""
  rows, weights = _resampling(tf.shape(matrix)[0], *axis, out_size, mirror)
  window = tf.cast(tf.gather(matrix, rows), tf.float32)  # gather first: fewer bytes when uint8
  resampled = tf.reshape(tf.matmul(weights, window), [-1, tf.shape(matrix)[1]])
  return resampled if out_size % RESAMPLE_BLOCK == 0 else resampled[:out_size]


def resize_like_pil(image: tf.Tensor, size, crop=None, output=None, mirror=False) -> tf.Tensor:
  """PIL's image.crop(crop).resize(size, BILINEAR).crop(output) of an (h, w, c) uint8 image.

  size: (height, width) of the resized crop; crop: (top, left, height, width) of the part of
  `image` that is resized (default: all of it; no pixel outside it is read); output: (top, left,
  height, width) of the part of the resized image that is computed, height and width Python ints
  (default: all of it, then size must be ints). mirror flips the result horizontally at no cost.
  Returns uint8.

  Two separable passes, each a banded matmul over the leading axis, so the horizontal one works
  on the transposed image. PIL rounds to integers after each pass and mostly runs the horizontal
  pass first; here the vertical pass runs first, which saves transposing the larger input, and
  only the result is rounded. That moves some pixels by one level (tests/test_data_transforms.py
  has the figures).
  """
  shape = tf.shape(image)
  in_height, in_width, channels = shape[0], shape[1], image.shape[-1]
  top, left, crop_height, crop_width = crop if crop is not None else (0, 0, in_height, in_width)
  out_top, out_left, out_height, out_width = output if output is not None else (0, 0, *size)
  swap = lambda x, rows, cols: tf.transpose(tf.reshape(x, [rows, cols, channels]), [1, 0, 2])
  x = _resample_rows(tf.reshape(image, [in_height, in_width * channels]),
                     (top, crop_height, size[0], out_top), out_height)
  x = tf.reshape(swap(x, out_height, in_width), [in_width, out_height * channels])
  x = _resample_rows(x, (left, crop_width, size[1], out_left), out_width, mirror)
  # Positive weights summing to (just over) 1, see _resampling: 0 <= x < 255.5, and truncating
  # x + 0.5 rounds halves up, as PIL does.
  return tf.cast(swap(x, out_width, out_height) + 0.5, tf.uint8)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """torchvision CenterCrop: offsets int(round((dim - size) / 2))."""
  top, left = _center_offsets(tf.shape(image)[0], tf.shape(image)[1], size)
  return image[top:top + size, left:left + size]


def _center_offsets(height, width, size: int):
  offset = lambda dim: tf.cast(tf.round(tf.cast(dim - size, tf.float32) / 2), tf.int32)
  return offset(height), offset(width)


def random_flip(image: tf.Tensor, uniform: tf.Tensor) -> tf.Tensor:
  return tf.cond(uniform < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


def random_crop(image: tf.Tensor, size: int, uniforms: tf.Tensor) -> tf.Tensor:
  """torchvision RandomCrop(size) without padding: offsets uniform over all valid positions."""
  shape = tf.shape(image)
  top = tf.cast(uniforms[0] * tf.cast(shape[0] - size + 1, tf.float32), tf.int32)
  left = tf.cast(uniforms[1] * tf.cast(shape[1] - size + 1, tf.float32), tf.int32)
  return image[top:top + size, left:left + size]


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


def jpeg_crop_box(encoded: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
  """The RandomResizedCrop box [top, left, h, w] of a JPEG for the ImageNet train draws."""
  shape = tf.image.extract_jpeg_shape(encoded)
  return random_resized_crop_box(shape[0], shape[1], uniforms[:4 * RRC_ATTEMPTS])


def widened_crop(box: tf.Tensor, image_width) -> tuple[tf.Tensor, tf.Tensor]:
  """The crop window [top, left, h, w] widened by at least one column on each side and to a
  multiple of WIDTH_STEP columns, as far as the image allows; and the offset of the crop's first
  column inside it.

  The margin makes the decoded crop bit-identical to the same pixels of a full decode (PIL's):
  decode_and_crop_jpeg upsamples the chroma of a window's first and last columns without their
  outer neighbours, which moved those columns by up to 26 levels in about half of the crops.
  """
  top, left, height, width = tf.unstack(box)
  wide = tf.minimum(-(-(width + 2) // WIDTH_STEP) * WIDTH_STEP, image_width)
  wide_left = tf.clip_by_value(left - (wide - width) // 2, 0, image_width - wide)
  return tf.stack([top, wide_left, height, wide]), left - wide_left


@dataclasses.dataclass(frozen=True)
class Transforms:
  """decode: encoded bytes -> stored image; train: (stored, uniforms) -> uint8 image;
  eval: encoded bytes -> uint8 image; num_uniforms: random numbers train needs. The images stay
  uint8 (0..255); data.model_input maps them to the model's input on the device."""

  decode: Callable[[tf.Tensor], tf.Tensor]
  train: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
  eval: Callable[[tf.Tensor], tf.Tensor]
  num_uniforms: int


def dogs(size: int) -> Transforms:
  """Resize((256, 256)) then RandomCrop(224) + flip + ColorJitter(brightness) | CenterCrop(224)."""
  resized = resize_size(size)

  def decode(encoded):  # The 256x256 image is what the cache keeps.
    return resize_like_pil(decode_rgb(encoded), (resized, resized))

  def train(image, uniforms):
    image = random_flip(random_crop(image, size, uniforms[0:2]), uniforms[2])
    factor = 1.0 - BRIGHTNESS + 2 * BRIGHTNESS * uniforms[3]
    # PIL's ImageEnhance.Brightness blends with black and truncates to uint8 (Blend.c).
    return tf.cast(tf.minimum(tf.cast(image, tf.float32) * factor, 255.0), tf.uint8)

  def evaluate(encoded):
    return center_crop(decode(encoded), size)

  return Transforms(decode, train, evaluate, num_uniforms=4)


def imagenet(size: int) -> Transforms:
  """RandomResizedCrop(224) + flip | Resize(256) + CenterCrop(224); Normalize on the device."""
  short_side = resize_size(size)

  def train(encoded, uniforms):
    box = jpeg_crop_box(encoded, uniforms)
    window, left = widened_crop(box, tf.image.extract_jpeg_shape(encoded)[1])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3,
                                         dct_method="INTEGER_ACCURATE")
    return resize_like_pil(crop, (size, size), crop=(0, left, box[2], box[3]),
                           mirror=uniforms[4 * RRC_ATTEMPTS] < 0.5)

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
    # Only the centre crop of the resized image is computed.
    top, left = _center_offsets(new_h, new_w, size)
    return resize_like_pil(image, (new_h, new_w), output=(top, left, size, size))

  return Transforms(tf.identity, train, evaluate, num_uniforms=4 * RRC_ATTEMPTS + 1)


def cifar(size: int) -> Transforms:
  """RandomCrop(32, padding=4) + flip | nothing."""

  def decode(encoded):
    image = decode_rgb(encoded)
    if size != 32:
      image = resize_like_pil(image, (size, size))
    return image

  def train(image, uniforms):
    padded = tf.pad(image, [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
    return random_flip(random_crop(padded, size, uniforms[0:2]), uniforms[2])

  return Transforms(decode, train, decode, num_uniforms=3)


FAMILIES = {"dogs": dogs, "imagenet": imagenet, "cifar": cifar}
