"""Backend-free pieces of the input pipelines: config.data defaults, host sharding, padding.

Nothing here imports tensorflow; the numpy datasets (digits, synthetic) and the tfds pipelines
both build on these helpers so the sharding and padding rules exist once.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, NamedTuple

import numpy as np

Batch = dict[str, np.ndarray]

# The upstream torchvision transforms' constants (docs/upstream.md §5), shared by the tf.data
# transforms and their PIL reference.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # resize to 256 before cropping 224; kept for other crop sizes
RRC_SCALE = (0.08, 1.0)  # RandomResizedCrop area fraction
RRC_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio
RRC_ATTEMPTS = 10  # boxes RandomResizedCrop tries before falling back to a centre crop
BRIGHTNESS = 0.4  # ColorJitter(brightness=0.4): factor uniform in [0.6, 1.4]
CIFAR_PAD = 4

def default_config():
  """config.data: every field the input pipelines read, with its default."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ml_collections import config_dict  # pylint: disable=g-import-not-at-top

  data = ml_collections.ConfigDict()
  data.dataset = "digits"  # rap_flax.data.DATASETS
  data.data_dir = config_dict.placeholder(str)  # tfds data_dir; None = the tfds default.
  data.image_size = config_dict.placeholder(int)  # None = the dataset's own size.
  data.train_split = ""  # "" = the dataset's default split.
  data.eval_split = ""
  data.cache = True  # Keep decoded training images in memory where the dataset is small.
  data.shuffle_buffer_size = 16_384
  data.prefetch_batches = 2
  data.synthetic_num_classes = 10
  data.synthetic_num_train = 1024
  data.synthetic_num_eval = 256
  return data


class DatasetInfo(NamedTuple):
  name: str
  num_classes: int
  num_train: int
  num_eval: int
  image_size: int


@dataclasses.dataclass(frozen=True)
class HostShard:
  """Which process reads which part of the data."""

  index: int
  count: int

  @classmethod
  def resolve(cls, process_index: int | None, process_count: int | None) -> HostShard:
    if process_index is None or process_count is None:
      import jax  # Imported here so that merely importing rap_flax.data stays cheap.

      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(
          f"process_index={process_index} is not in [0, process_count={process_count}); "
          "pass 0 <= process_index < process_count.")
    return cls(process_index, process_count)

  def train_range(self, num_examples: int) -> range:
    """Equal-sized contiguous slice for training (the remainder is dropped)."""
    per_host = num_examples // self.count
    return range(self.index * per_host, (self.index + 1) * per_host)

  def eval_range(self, num_examples: int) -> range:
    """Contiguous slice for evaluation; sizes differ by at most one, nothing is dropped.

    Same rule as tfds.even_splits(drop_remainder=False): the first hosts get one extra example.
    """
    base, extra = divmod(num_examples, self.count)
    start = self.index * base + min(self.index, extra)
    return range(start, start + base + (self.index < extra))

  def num_eval_batches(self, num_examples: int, batch_size: int) -> int:
    """Batches every host yields in eval, so that all hosts run the same number of steps."""
    return math.ceil(math.ceil(num_examples / self.count) / batch_size)


def check_batch_size(batch_size: int) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int (per host), got {batch_size!r}.")


def train_steps_per_epoch(num_host_examples: int, batch_size: int, dataset: str) -> int:
  steps = num_host_examples // batch_size
  if steps == 0:
    raise ValueError(
        f"{dataset}: per-host batch_size={batch_size} exceeds the {num_host_examples} training "
        "examples of this host; use a smaller batch size.")
  return steps


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


def example_shapes(image_size: int) -> ExampleShapes:
  return {"image": ((image_size, image_size, 3), np.dtype(np.float32)),
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


# Stateless per-example randomness for the numpy pipelines: a splitmix64 hash of
# (seed, epoch, position in epoch, draw) so that augmentation never depends on iteration history.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  z = x + _GOLDEN
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def _as_u64(value: int) -> np.ndarray:
  return np.array([value & 0xFFFF_FFFF_FFFF_FFFF], np.uint64)


def example_uniforms(seed: int, epoch: int, positions: np.ndarray, num_draws: int) -> np.ndarray:
  """Uniform floats in [0, 1), shape (len(positions), num_draws), a pure function of the args."""
  key = _splitmix64(_splitmix64(_as_u64(seed)) ^ _as_u64(epoch))
  per_example = _splitmix64(key ^ np.asarray(positions, np.uint64))
  draws = np.arange(1, num_draws + 1, dtype=np.uint64) * _GOLDEN
  bits = _splitmix64(per_example[:, None] ^ draws[None, :])
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def epoch_seed(seed: int, epoch: int, shard: HostShard) -> int:
  """Seed of one host's shuffle in one epoch: a pure function of (seed, epoch, host)."""
  sequence = np.random.SeedSequence([seed & 0xFFFF_FFFF, epoch, shard.index])
  return int(sequence.generate_state(1, np.uint32)[0])


def epoch_permutation(seed: int, epoch: int, shard: HostShard, n: int) -> np.ndarray:
  """Shuffle order of one host's n training examples in one epoch."""
  return np.random.default_rng(epoch_seed(seed, epoch, shard)).permutation(n)
