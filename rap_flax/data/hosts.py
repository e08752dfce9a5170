"""Which host reads which examples, and how many batches that makes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class HostShard:
  """Which process reads which part of the data."""

  index: int
  count: int

  @classmethod
  def resolve(cls, process_index: int | None, process_count: int | None) -> HostShard:
    if process_index is None or process_count is None:
      import jax  # pylint: disable=g-import-not-at-top  # keeps `import rap_flax.data` cheap

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
