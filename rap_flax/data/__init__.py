"""Input pipelines: per-host iterators of numpy batches {"image", "label", "mask"}.

Everything here reads only `config.data` (defaults: `default_config()`):

    info = data.get_dataset_info(config.data)
    train_it = data.create_train_iterator(config.data, per_host_batch, start_step=0, seed=0)
    eval_it = data.create_eval_iterator(config.data, per_host_batch)
    images = data.model_input(config.data)(batch["image"])  # inside the jitted step

Importing this package never imports tensorflow; the tfds datasets import it when used.
"""

from __future__ import annotations

from typing import Iterator

from rap_flax.data import catalog, digits, hosts, synthetic
from rap_flax.data.config import DatasetInfo, default_config
from rap_flax.data.model_input import image_dtype, model_input
from rap_flax.data.padding import Batch

_IN_MEMORY = {"digits": digits.build, "synthetic": synthetic.build}
DATASETS = (*_IN_MEMORY, *catalog.TFDS_DATASETS)


def _pipeline(data_config):
  """The dataset named by data_config.dataset, ready to iterate (tfds ones must be prepared)."""
  name = data_config.dataset
  if name in _IN_MEMORY:
    return _IN_MEMORY[name](data_config)
  if name in catalog.TFDS_DATASETS:
    from rap_flax.data import tfds_pipeline  # imports tensorflow

    return tfds_pipeline.TfdsPipeline(catalog.TFDS_DATASETS[name], data_config)
  raise ValueError(f"Unknown config.data.dataset={name!r}; choose one of {', '.join(DATASETS)}.")


def num_classes(data_config) -> int:
  """The dataset's number of classes, without reading (or having) the data."""
  name = data_config.dataset
  if name in catalog.TFDS_DATASETS:
    return catalog.TFDS_DATASETS[name].num_classes
  if name == "synthetic":
    return int(data_config.synthetic_num_classes)
  if name == "digits":
    return digits.NUM_CLASSES
  raise ValueError(f"Unknown config.data.dataset={name!r}; choose one of {', '.join(DATASETS)}.")


def get_dataset_info(data_config) -> DatasetInfo:
  """Name, number of classes, split sizes and image size of data_config.dataset."""
  return _pipeline(data_config).info


def create_train_iterator(data_config, batch_size: int, start_step: int = 0, seed: int = 0, *,
                          process_index: int | None = None,
                          process_count: int | None = None) -> Iterator[Batch]:
  """Infinite, shuffled, augmented batches of this host's shard, starting at global step start_step.

  The batch at step s depends only on (data_config, batch_size, seed, host shard, s): a run
  resumed with start_step=s yields exactly the batches the uninterrupted run would have.
  """
  hosts.check_batch_size(batch_size)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  shard = hosts.HostShard.resolve(process_index, process_count)
  return _pipeline(data_config).train_iterator(batch_size, start_step, int(seed), shard)


def create_eval_iterator(data_config, batch_size: int, *, process_index: int | None = None,
                         process_count: int | None = None) -> Iterator[Batch]:
  """One ordered pass over this host's eval shard; padding rows have mask False.

  Every host yields the same number of batches, and the masks of all hosts together sum to the
  size of the eval split.
  """
  hosts.check_batch_size(batch_size)
  shard = hosts.HostShard.resolve(process_index, process_count)
  return _pipeline(data_config).eval_iterator(batch_size, shard)


__all__ = ["DATASETS", "Batch", "DatasetInfo", "create_eval_iterator", "create_train_iterator",
           "default_config", "get_dataset_info", "image_dtype", "model_input", "num_classes"]
