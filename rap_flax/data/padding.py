"""Eval batches of a fixed size: the last one padded, padding rows masked out."""

from __future__ import annotations

from typing import Iterator

import numpy as np

Batch = dict[str, np.ndarray]


def pad_batch(batch: Batch, batch_size: int) -> Batch:
  """Pads a partial eval batch with zeros up to batch_size; padded rows get mask False."""
  n = len(batch["label"])
  mask = np.zeros(batch_size, bool)
  mask[:n] = batch.get("mask", True)
  out = {"mask": mask}
  for key, value in batch.items():
    if key == "mask":
      continue
    padded = np.zeros((batch_size,) + value.shape[1:], value.dtype)
    padded[:n] = value
    out[key] = padded
  return out


ExampleShapes = dict[str, tuple[tuple[int, ...], np.dtype]]


def example_shapes(image_size: int, image_dtype=np.float32) -> ExampleShapes:
  return {"image": ((image_size, image_size, 3), np.dtype(image_dtype)),
          "label": ((), np.dtype(np.int32))}


def pad_eval_batches(batches: Iterator[Batch], batch_size: int, num_batches: int,
                     shapes: ExampleShapes) -> Iterator[Batch]:
  """Yields exactly num_batches full-size batches: the last real one padded, then empty ones.

  shapes (per-example shape and dtype of every key but mask) describe the all-masked
  batches, which a host needs even when its shard is empty.
  """
  yielded = 0
  for batch in batches:
    yielded += 1
    if yielded > num_batches:
      raise AssertionError(f"eval produced more than the expected {num_batches} batches")
    yield pad_batch(batch, batch_size)
  for _ in range(num_batches - yielded):
    empty = {key: np.zeros((batch_size,) + shape, dtype)
             for key, (shape, dtype) in shapes.items()}
    yield {**empty, "mask": np.zeros(batch_size, bool)}
