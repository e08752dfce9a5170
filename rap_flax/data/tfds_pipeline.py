"""tf.data pipelines over the prepared tfds datasets (imports tensorflow; loaded only when used).

Train: host shard (tfds.even_splits, remainder dropped) -> [decode -> cache] -> shuffle keyed by
(seed, epoch) -> skip to the resume step -> per-example stateless augmentation -> batch.
Each epoch is its own tf.data pipeline, so epoch e is built identically whether or not earlier
epochs ran in this process; that is what makes resuming exact.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from rap_flax import files
from rap_flax.data import catalog, config, hosts, padding, randomness, transforms
from rap_flax.data.tf_import import tf, tfds

_SKIP_IMAGE_DECODING = {"image": tfds.decode.SkipDecoding()}
_FILE_NAME_FEATURES = ("image/filename", "file_name", "id")


class DatasetNotPreparedError(FileNotFoundError):
  pass


def parallel_map(dataset: tf.data.Dataset, fn) -> tf.data.Dataset:
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def deterministic(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Parallel maps keep their input order: the batch at a step must not depend on timing."""
  options = tf.data.Options()
  options.deterministic = True
  return dataset.with_options(options)


def load_builder(spec: catalog.TfdsDataset, data_dir: str | None) -> tfds.core.DatasetBuilder:
  if spec.tfds_name.startswith("imagenet_rein/"):
    from rap_flax.data import builders  # noqa: F401  (registers the imagenet_rein builder)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(
        f"Dataset {spec.name!r} is not prepared in {builder.data_dir}; prepare it once with\n"
        f"  {spec.prepare_command}  and set --config.data.data_dir=DATA_DIR.")
  return builder


class TfdsPipeline:
  """A prepared tfds dataset plus what the config says about reading it."""

  def __init__(self, spec: catalog.TfdsDataset, data_config):
    self.spec = spec
    self.builder = load_builder(spec, files.expand(data_config.data_dir))
    self.train_split = data_config.train_split or spec.train_split
    self.eval_split = data_config.eval_split or spec.eval_split
    self.image_size = int(data_config.image_size or spec.image_size)
    self.transforms = transforms.FAMILIES[spec.preprocessing](self.image_size)
    self.cache = bool(data_config.cache) and spec.cacheable
    self.shuffle_buffer_size = int(data_config.shuffle_buffer_size)
    self.prefetch_batches = int(data_config.prefetch_batches)
    self.info = config.DatasetInfo(
        spec.name, self.builder.info.features["label"].num_classes,
        self.num_examples(self.train_split), self.num_examples(self.eval_split), self.image_size)

  def num_examples(self, split) -> int:
    try:
      return self.builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
      raise ValueError(
          f"{self.spec.name} has no split {split!r} (splits: {list(self.builder.info.splits)}); "
          "fix config.train_split / config.eval_split.") from error

  def read(self, split, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """(encoded image, int32 label) pairs; files shuffled by shuffle_seed when given."""
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    dataset = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                      read_config=read_config, decoders=_SKIP_IMAGE_DECODING)
    return parallel_map(dataset, lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))

  def train_iterator(self, batch_size: int, start_step: int, seed: int,
                     shard: hosts.HostShard) -> Iterator[padding.Batch]:
    epochs = TrainEpochs(self, batch_size, seed, shard)

    def batches():
      epoch, step_in_epoch = divmod(start_step, epochs.steps_per_epoch)
      mask = np.ones(batch_size, bool)
      while True:
        with self._naming_undecodable(epochs.split):
          for batch in epochs.batches(epoch, step_in_epoch).as_numpy_iterator():
            yield {**batch, "mask": mask}
        epoch, step_in_epoch = epoch + 1, 0

    return batches()

  @contextlib.contextmanager
  def _naming_undecodable(self, split):
    """tf.data's decode error does not say which image; find it and say so."""
    # Looked up on entry: when an unfinished iterator is closed at interpreter exit, the
    # module's globals are already gone.
    decode_error = tf.errors.InvalidArgumentError
    try:
      yield
    except decode_error as error:
      name = self._first_undecodable(split)
      if name is None:
        raise
      cause = error.message.splitlines()[0].rsplit(": ", 1)[-1]
      raise ValueError(
          f"Image {name!r} of {self.spec.name} cannot be decoded ({cause}). Prepare the "
          f"dataset again (it leaves such images out): {self.spec.prepare_command}") from error

  def _first_undecodable(self, split) -> str | None:
    examples = self.builder.as_dataset(split=split, decoders=_SKIP_IMAGE_DECODING)
    for example in examples.as_numpy_iterator():
      try:
        transforms.decode_rgb(tf.constant(example["image"]))
      except tf.errors.InvalidArgumentError:
        names = [example[k] for k in _FILE_NAME_FEATURES if k in example]
        return names[0].decode() if names else "(unnamed example)"
    return None

  def eval_iterator(self, batch_size: int, shard: hosts.HostShard) -> Iterator[padding.Batch]:
    total = self.info.num_eval
    batches = iter(())
    if len(shard.eval_range(total)):  # tfds refuses to read an empty sub-split
      # drop_remainder=False hands the first hosts one extra example, like HostShard.eval_range.
      split = tfds.even_splits(self.eval_split, n=shard.count, drop_remainder=False)[shard.index]
      evaluate = lambda image, label: {"image": self.transforms.eval(image), "label": label}
      dataset = parallel_map(self.read(split), evaluate)
      dataset = dataset.batch(batch_size).prefetch(self.prefetch_batches)
      batches = deterministic(dataset).as_numpy_iterator()
    return padding.pad_eval_batches(batches, batch_size, shard.num_eval_batches(total, batch_size),
                                 padding.example_shapes(self.image_size, np.uint8))


class TrainEpochs:
  """One host's training epochs. Each is its own tf.data pipeline, built the same way whether or
  not earlier epochs ran in this process: that is what makes resuming exact."""

  def __init__(self, pipeline: TfdsPipeline, batch_size: int, seed: int, shard: hosts.HostShard):
    self.pipeline, self.batch_size, self.seed, self.shard = pipeline, batch_size, seed, shard
    self.split = tfds.even_splits(pipeline.train_split, n=shard.count,
                                  drop_remainder=True)[shard.index]
    self.num_examples = pipeline.num_examples(self.split)
    self.steps_per_epoch = hosts.train_steps_per_epoch(self.num_examples, batch_size,
                                                       pipeline.spec.name)
    self._cached = None
    if pipeline.cache:
      self._cached = parallel_map(pipeline.read(self.split), self._decode).cache()

  def _decode(self, image, label):
    return self.pipeline.transforms.decode(image), label

  def examples(self, epoch: int, first_step: int) -> tf.data.Dataset:
    """(position in the epoch, (stored image, label)) from first_step on, in the epoch's order;
    the stored image is the encoded one, or the decoded one where the dataset is cached."""
    shuffle_seed = randomness.epoch_seed(self.seed, epoch, self.shard)
    examples = self._cached
    if examples is None:
      examples = self.pipeline.read(self.split, shuffle_seed=shuffle_seed)
    # A buffer larger than the dropped remainder makes each epoch read the split to its end,
    # which is what completes the cache in the first epoch.
    buffer_size = min(max(self.pipeline.shuffle_buffer_size, self.batch_size), self.num_examples)
    examples = examples.shuffle(buffer_size, seed=shuffle_seed)
    examples = examples.skip(first_step * self.batch_size)
    if self._cached is None:
      examples = parallel_map(examples, self._decode)
    positions = tf.data.Dataset.range(first_step * self.batch_size,
                                      self.steps_per_epoch * self.batch_size)
    return tf.data.Dataset.zip(positions, examples)  # zip stops at the dropped remainder

  def uniforms(self, epoch: int, position: tf.Tensor) -> tf.Tensor:
    """The random numbers of the example at `position` of `epoch`: a pure function of both."""
    key = transforms.example_key(self.seed, epoch, position)
    return tf.random.stateless_uniform([self.pipeline.transforms.num_uniforms], seed=key)

  def batches(self, epoch: int, first_step: int) -> tf.data.Dataset:
    train = self.pipeline.transforms.train

    def augment(position, example):
      image, label = example
      return {"image": train(image, self.uniforms(epoch, position)), "label": label}

    batches = parallel_map(self.examples(epoch, first_step), augment)
    batches = batches.batch(self.batch_size, drop_remainder=True)
    return deterministic(batches.prefetch(self.pipeline.prefetch_batches))
