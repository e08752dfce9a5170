"""The on-device end of the input pipelines: batch["image"] -> what the model takes.

The tfds pipelines hand over uint8 images (0..255): a quarter of the bytes of float32, and no
float pass on the host (benchmarks/README.md has the figures). The jitted train and eval steps
map them to what the upstream transforms feed the model, ToTensor's [0, 1] and, for the ImageNet
family, Normalize(mean, std); XLA fuses that into the step. The in-memory datasets (digits,
synthetic) hand over float32 images already.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from rap_flax.data import catalog
from rap_flax.data.transform_constants import IMAGENET_MEAN, IMAGENET_STD

ModelInput = Callable[[Any], Any]  # a jax array of images -> float32 model input


def image_dtype(data_config) -> np.dtype:
  """The dtype of batch["image"] as data_config's pipeline hands it over."""
  return np.dtype(np.uint8 if data_config.dataset in catalog.TFDS_DATASETS else np.float32)


def model_input(data_config=None) -> ModelInput:
  """The function the train and eval steps apply to batch["image"] of data_config's dataset
  (None: float32 images that go to the model as they are). Works on jax and numpy arrays."""
  spec = catalog.TFDS_DATASETS.get(data_config.dataset) if data_config is not None else None
  if spec is None:
    return _float_images
  mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
  imagenet = spec.preprocessing == "imagenet"
  scale = (1 / (255 * std) if imagenet else np.full(3, 1 / 255)).astype(np.float32)
  offset = (-mean / std if imagenet else np.zeros(3)).astype(np.float32)

  def from_uint8(images):
    if images.dtype != np.uint8:
      raise TypeError(f"{spec.name} batches hold uint8 images, got {images.dtype}.")
    return images.astype(np.float32) * scale + offset

  return from_uint8


def _float_images(images):
  if images.dtype == np.uint8:
    raise TypeError("uint8 images need their dataset's scaling: build the step with "
                    "model_input=data.model_input(config.data).")
  return images
