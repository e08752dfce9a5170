"""The upstream torchvision transforms, done with PIL the way torchvision does them.

The reference that the tf.data transforms are tested against, and the baseline of
benchmarks/input_pipeline.py. Random choices come from the caller as uniforms in [0, 1), laid
out as in rap_flax.data.transforms, so the same draws drive both implementations.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance

from rap_flax.data import transform_constants
from rap_flax.data.transform_constants import BRIGHTNESS, RRC_ATTEMPTS, RRC_RATIO, RRC_SCALE

IMAGENET_MEAN = np.array(transform_constants.IMAGENET_MEAN, np.float32)
IMAGENET_STD = np.array(transform_constants.IMAGENET_STD, np.float32)


def load_rgb(encoded: bytes) -> Image.Image:
  """torchvision's default loader: open and convert to RGB."""
  return Image.open(io.BytesIO(encoded)).convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
  """ToTensor, in HWC layout."""
  return np.asarray(image, np.float32) / 255.0


def normalize(array: np.ndarray) -> np.ndarray:
  return (array - IMAGENET_MEAN) / IMAGENET_STD


def center_crop(image: Image.Image, size: int) -> Image.Image:
  top = int(round((image.height - size) / 2.0))
  left = int(round((image.width - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
  """Resize(int): the short side becomes size, the long side int(size * long / short)."""
  width, height = image.size
  if width <= height:
    new_width, new_height = size, int(size * height / width)
  else:
    new_width, new_height = int(size * width / height), size
  return image.resize((new_width, new_height), Image.BILINEAR)


def random_resized_crop_box(height: int, width: int, uniforms: np.ndarray,
                            scale=RRC_SCALE, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
  """RandomResizedCrop.get_params -> (top, left, h, w); uniforms: 4 x RRC_ATTEMPTS."""
  u = np.asarray(uniforms).reshape(4, RRC_ATTEMPTS)
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for attempt in range(RRC_ATTEMPTS):
    area = height * width * (scale[0] + (scale[1] - scale[0]) * u[0, attempt])
    aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1, attempt])
    w = int(round(math.sqrt(area * aspect)))
    h = int(round(math.sqrt(area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(u[2, attempt] * (height - h + 1))
      left = int(u[3, attempt] * (width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def flip(image: Image.Image, uniform: float) -> Image.Image:
  return image.transpose(Image.FLIP_LEFT_RIGHT) if uniform < 0.5 else image


def dogs_train(encoded: bytes, uniforms: np.ndarray, size: int = 224,
               resized: int = 256) -> np.ndarray:
  """Resize((256, 256)), RandomCrop(224), RandomHorizontalFlip, ColorJitter(brightness=0.4)."""
  image = load_rgb(encoded).resize((resized, resized), Image.BILINEAR)
  top = int(uniforms[0] * (resized - size + 1))
  left = int(uniforms[1] * (resized - size + 1))
  image = flip(image.crop((left, top, left + size, top + size)), uniforms[2])
  image = ImageEnhance.Brightness(image).enhance(1 - BRIGHTNESS + 2 * BRIGHTNESS * uniforms[3])
  return to_array(image)


def dogs_eval(encoded: bytes, size: int = 224, resized: int = 256) -> np.ndarray:
  """Resize((256, 256)), CenterCrop(224)."""
  image = load_rgb(encoded).resize((resized, resized), Image.BILINEAR)
  return to_array(center_crop(image, size))


def imagenet_train(encoded: bytes, uniforms: np.ndarray, size: int = 224) -> np.ndarray:
  """RandomResizedCrop(224), RandomHorizontalFlip, Normalize."""
  image = load_rgb(encoded)
  top, left, h, w = random_resized_crop_box(image.height, image.width,
                                            uniforms[:4 * RRC_ATTEMPTS])
  image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
  return normalize(to_array(flip(image, uniforms[4 * RRC_ATTEMPTS])))


def imagenet_eval(encoded: bytes, size: int = 224, resized: int = 256) -> np.ndarray:
  """Resize(256), CenterCrop(224), Normalize."""
  return normalize(to_array(center_crop(resize_short_side(load_rgb(encoded), resized), size)))
