"""Stateless randomness for the pipelines: shuffles and augmentation draws are pure functions
of (seed, epoch, host, position), so a resumed run sees the same batches."""

from __future__ import annotations

import numpy as np

from rap_flax.data.hosts import HostShard

# Per-example draws for the numpy pipelines: a splitmix64 hash of
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
