"""`config.data`: every field the input pipelines read, with its default; and what a configured
dataset reports about itself."""

from __future__ import annotations

from typing import NamedTuple

import ml_collections
from ml_collections import config_dict


def default_config():
  """config.data: every field the input pipelines read, with its default."""
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
