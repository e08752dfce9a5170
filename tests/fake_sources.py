"""Fake raw sources in the layouts `prepare` reads: for tests and benchmarks (needs PIL, scipy)."""

from __future__ import annotations

import io
import os
import tarfile
from typing import Mapping, Sequence

import numpy as np
from PIL import Image


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def flat_jpeg(colour, shape=(20, 24)) -> bytes:
  return jpeg(np.full((*shape, 3), colour, np.uint8), quality=95)


def photo_like_jpeg(height: int, width: int, seed: int = 0) -> bytes:
  """Smooth colour waves, noise and a sharp-edged block: what resizing and JPEG find hard."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  phase = rng.uniform(0, 6, 3)
  image = np.stack([np.sin(8 * x + 3 * y + phase[0]), np.cos(5 * y - 2 * x + phase[1]),
                    np.sin(13 * x * y + phase[2])], -1)
  image = image * 90 + 128 + rng.normal(0, 12, (height, width, 3))
  image[height // 3:height // 2, width // 4:width // 2] = rng.integers(0, 256, 3)
  return jpeg(np.clip(image, 0, 255))


def _add_to_tar(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  archive.addfile(info, io.BytesIO(payload))


def _mat_file_list(paths: Sequence[str]) -> bytes:
  import scipy.io

  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {"file_list": np.array(list(paths), dtype=object)})
  return buffer.getvalue()


def write_stanford_dogs_source(root: str, images: Mapping[str, bytes],
                               lists: Mapping[str, Sequence[str]], layout: str) -> None:
  """images: {"n02085620-Chihuahua/n02085620_1.jpg": jpeg}; lists: {"train": [...], "test": [...]}.

  layout "upstream": Images/ + train_list.mat + test_list.mat; "tars": images.tar + lists.tar.
  """
  mats = {f"{split}_list.mat": _mat_file_list(paths) for split, paths in lists.items()}
  os.makedirs(root, exist_ok=True)
  if layout == "upstream":
    for path, payload in images.items():
      os.makedirs(os.path.join(root, "Images", os.path.dirname(path)), exist_ok=True)
      with open(os.path.join(root, "Images", path), "wb") as f:
        f.write(payload)
    for name, payload in mats.items():
      with open(os.path.join(root, name), "wb") as f:
        f.write(payload)
  elif layout == "tars":
    with tarfile.open(os.path.join(root, "images.tar"), "w") as archive:
      for path, payload in images.items():
        _add_to_tar(archive, f"Images/{path}", payload)
    with tarfile.open(os.path.join(root, "lists.tar"), "w") as archive:
      for name, payload in mats.items():
        _add_to_tar(archive, name, payload)
  else:
    raise ValueError(f"layout must be 'upstream' or 'tars', got {layout!r}")


def write_ilsvrc_tars(root: str, train: Mapping[str, Sequence[bytes]],
                      validation: Sequence[bytes]) -> None:
  """ILSVRC2012_img_train.tar (one <wnid>.tar per class) and ILSVRC2012_img_val.tar.

  tfds labels validation image k (1-based, sorted names) with line k of its label list.
  """
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as archive:
    for wnid, payloads in train.items():
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as class_tar:
        for k, payload in enumerate(payloads):
          _add_to_tar(class_tar, f"{wnid}_{k}.JPEG", payload)
      _add_to_tar(archive, f"{wnid}.tar", inner.getvalue())
  with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as archive:
    for k, payload in enumerate(validation, start=1):
      _add_to_tar(archive, f"ILSVRC2012_val_{k:08d}.JPEG", payload)
