"""Input pipelines: per-host iterators of numpy batches {"image", "label", "mask"}.

    info = data.get_dataset_info(config)
    train_it = data.create_train_iterator(config, batch_size=per_host_batch, start_step=0)
    eval_it = data.create_eval_iterator(config, batch_size=per_host_batch)

Importing this package never imports tensorflow; the tfds datasets import it when used.
"""

from __future__ import annotations

from typing import Iterator

from rap_flax.data import base, catalog, digits, synthetic
from rap_flax.data.base import CONFIG_DEFAULTS, Batch, DatasetInfo

_IN_MEMORY = {"digits": digits.build, "synthetic": synthetic.build}
DATASETS = (*_IN_MEMORY, *catalog.TFDS_DATASETS)


def _source(config):
  """The dataset named by config.dataset, ready to iterate (tfds ones must be prepared)."""
  name = config.get("dataset") if hasattr(config, "get") else getattr(config, "dataset", None)
  if name in _IN_MEMORY:
    return _IN_MEMORY[name](config)
  if name in catalog.TFDS_DATASETS:
    from rap_flax.data import tfds_pipeline  # imports tensorflow

    return tfds_pipeline.TfdsSource(catalog.TFDS_DATASETS[name], config)
  raise ValueError(f"Unknown config.dataset={name!r}; choose one of {', '.join(DATASETS)}.")


def get_dataset_info(config) -> DatasetInfo:
  """Name, number of classes, split sizes and image size of config.dataset."""
  return _source(config).info


def create_train_iterator(config, batch_size: int, start_step: int = 0, *,
                          process_index: int | None = None,
                          process_count: int | None = None) -> Iterator[Batch]:
  """Infinite, shuffled, augmented batches of this host's shard, starting at global step start_step.

  The batch at step s depends only on (config, batch_size, host shard, s): a run resumed with
  start_step=s yields exactly the batches the uninterrupted run would have.
  """
  base.check_batch_size(batch_size)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  shard = base.HostShard.resolve(process_index, process_count)
  return _source(config).train_iterator(batch_size, start_step,
                                        int(base.config_value(config, "seed")), shard)


def create_eval_iterator(config, batch_size: int, *, process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[Batch]:
  """One ordered pass over this host's eval shard; padding rows have mask False.

  Every host yields the same number of batches, and the masks of all hosts together sum to the
  size of the eval split.
  """
  base.check_batch_size(batch_size)
  shard = base.HostShard.resolve(process_index, process_count)
  return _source(config).eval_iterator(batch_size, shard)


__all__ = ["CONFIG_DEFAULTS", "DATASETS", "Batch", "DatasetInfo", "create_eval_iterator",
           "create_train_iterator", "get_dataset_info"]
