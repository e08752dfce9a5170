"""The tfds pipelines on tfds.testing.mock_data: every tfds dataset, without the real data.

The mock honours sub-splits, so host sharding is exercised for real, and serves flat-colour
images whose red/green ratio encodes the example's index (crops, flips and brightness keep it
readable in the uint8 batches), with label = index % num_classes. Metadata written next to it
gives tfds the split sizes.
"""

import contextlib
import os

import jax
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from rap_flax import data  # noqa: E402
from rap_flax.data import catalog, tfds_pipeline, transforms  # noqa: E402
from rap_flax.data.transform_constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from tests.test_data import assert_batches_equal, take

TRAIN_SIZE, EVAL_SIZE = 26, 10
IMAGE_SIZE = 16
GREEN = 150


def encoded_image(index: int, family: str) -> bytes:
  """Flat colour (20 + 6 * index, GREEN, 90); CIFAR: 32x32 PNG, others: JPEG of varied size."""
  shape = (32, 32, 3) if family == "cifar" else (30 + 7 * (index % 4), 24 + 11 * (index % 3), 3)
  image = np.empty(shape, np.uint8)
  image[:] = (20 + 6 * index, GREEN, 90)
  encode = tf.io.encode_png if family == "cifar" else tf.io.encode_jpeg
  return encode(image).numpy()


def example_ids(batch):
  """Index of the example in every row of a batch (rows with mask False excluded)."""
  centre = batch["image"][batch["mask"], IMAGE_SIZE // 2, IMAGE_SIZE // 2].astype(np.float64)
  return np.round((centre[:, 0] / centre[:, 1] * GREEN - 20) / 6).astype(int)


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  del read_config, shuffle_files, kwargs
  assert decoders and isinstance(decoders["image"], tfds.decode.SkipDecoding)
  family = next(spec.preprocessing for spec in catalog.TFDS_DATASETS.values()
                if spec.tfds_name.split("/")[0] == self.name)
  indices = [i for instruction in self.info.splits[split].file_instructions
             for i in range(instruction.skip, instruction.skip + instruction.take)]
  return tf.data.Dataset.from_tensor_slices({
      "image": tf.constant([encoded_image(i, family) for i in indices], tf.string),
      "label": tf.constant(indices, tf.int64) % self.info.features["label"].num_classes,
  })


def write_metadata(spec, data_dir, sizes):
  if spec.name.startswith("imagenet_rein"):
    from rap_flax.data import builders  # noqa: F401  (registers imagenet_rein)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=builder.name, filetype_suffix="tfrecord")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=name, shard_lengths=[size], num_bytes=0,
                          filename_template=template.replace(split=name))
      for name, size in sizes.items()]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


@contextlib.contextmanager
def mocked(dataset, tmp_path, **config_overrides):
  spec = catalog.TFDS_DATASETS[dataset]
  write_metadata(spec, str(tmp_path), {spec.train_split: TRAIN_SIZE, spec.eval_split: EVAL_SIZE})
  config = data.default_config()
  config.update({"dataset": dataset, "data_dir": str(tmp_path), "image_size": IMAGE_SIZE,
                 "cache": True, "shuffle_buffer_size": 64, "prefetch_batches": 1,
                 **config_overrides})
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path),
                              as_dataset_fn=fake_as_dataset):
    yield config


def model_input_range(dataset):
  """Per-channel range of data.model_input's output: ToTensor's [0, 1], normalised for ImageNet."""
  if catalog.TFDS_DATASETS[dataset].preprocessing == "imagenet":
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    return -mean / std, (1 - mean) / std
  return np.zeros(3), np.ones(3)


ALL = list(catalog.TFDS_DATASETS)
ONE_HOST = dict(process_index=0, process_count=1)


@pytest.mark.parametrize("dataset", ALL)
def test_batches_have_the_contract_shapes_dtypes_and_ranges(dataset, tmp_path):
  with mocked(dataset, tmp_path) as config:
    spec = catalog.TFDS_DATASETS[dataset]
    info = data.get_dataset_info(config)
    assert info == data.DatasetInfo(dataset, spec.num_classes, TRAIN_SIZE, EVAL_SIZE, IMAGE_SIZE)
    low, high = model_input_range(dataset)
    to_input = jax.jit(data.model_input(config))
    train = take(data.create_train_iterator(config, 8, **ONE_HOST), 4)  # crosses an epoch
    evals = list(data.create_eval_iterator(config, 4, **ONE_HOST))
    for batch in train + evals:
      assert batch["image"].shape == (len(batch["mask"]), IMAGE_SIZE, IMAGE_SIZE, 3)
      assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
      assert batch["mask"].dtype == bool
      images = np.asarray(to_input(batch["image"]))
      assert images.dtype == np.float32
      assert (images.min(axis=(0, 1, 2)) >= low - 1e-5).all()
      assert (images.max(axis=(0, 1, 2)) <= high + 1e-5).all()
      assert 0 <= batch["label"].min() and batch["label"].max() < spec.num_classes
      ids = example_ids(batch)
      np.testing.assert_array_equal(batch["label"][batch["mask"]], ids % spec.num_classes)
    assert all(batch["mask"].all() and len(batch["mask"]) == 8 for batch in train)
    if spec.preprocessing == "imagenet":
      assert np.asarray(to_input(train[0]["image"])).min() < 0  # mean/std normalised
    # Eval: 10 examples in batches of 4 -> the last batch holds 2 real rows, in order.
    assert [b["mask"].tolist() for b in evals] == [[True] * 4] * 2 + [[True] * 2 + [False] * 2]
    assert [example_ids(b).tolist() for b in evals] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert (evals[-1]["image"][2:] == 0).all()


@pytest.mark.parametrize("dataset", ALL)
def test_train_is_deterministic_resumable_and_sharded(dataset, tmp_path):
  with mocked(dataset, tmp_path) as config:
    # 2 hosts x 13 examples, batches of 4: 3 steps per epoch, one example shuffled out.
    host0 = take(data.create_train_iterator(config, 4, process_index=0, process_count=2), 6)
    host1 = take(data.create_train_iterator(config, 4, process_index=1, process_count=2), 3)
    resumed = data.create_train_iterator(config, 4, start_step=4, process_index=0, process_count=2)
    for step in (4, 5):  # a fresh iterator, mid-epoch: same batches as the uninterrupted run
      assert_batches_equal(next(resumed), host0[step])
    epoch_ids = lambda batches: np.concatenate([example_ids(b) for b in batches])
    for host, ids in ((0, epoch_ids(host0[:3])), (0, epoch_ids(host0[3:])), (1, epoch_ids(host1))):
      assert len(set(ids)) == 12 and set(ids) <= set(range(host * 13, host * 13 + 13))
    assert not np.array_equal(epoch_ids(host0[:3]), epoch_ids(host0[3:]))  # reshuffled
    other = next(data.create_train_iterator(config, 4, seed=1, process_index=0, process_count=2))
    assert not np.array_equal(other["image"], host0[0]["image"])


@pytest.mark.parametrize("dataset, num_hosts", [("stanford_dogs", 3), ("imagenet_rein30", 16),
                                                ("cifar100", 4)])
def test_eval_shards_are_disjoint_cover_and_stay_in_lockstep(dataset, num_hosts, tmp_path):
  with mocked(dataset, tmp_path) as config:
    per_host = [list(data.create_eval_iterator(config, 2, process_index=h,
                                               process_count=num_hosts))
                for h in range(num_hosts)]
    assert len({len(batches) for batches in per_host}) == 1
    ids = [i for batches in per_host for b in batches for i in example_ids(b)]
    assert ids == list(range(EVAL_SIZE))
    assert sum(b["mask"].sum() for batches in per_host for b in batches) == EVAL_SIZE


def test_default_image_sizes(tmp_path):
  for dataset, size in [("stanford_dogs", 224), ("imagenet2012", 224), ("cifar10", 32)]:
    with mocked(dataset, tmp_path / dataset, image_size=None) as config:
      assert data.get_dataset_info(config).image_size == size
  with mocked("imagenet2012", tmp_path / "full", image_size=None) as config:
    batch = next(data.create_train_iterator(config, 2, **ONE_HOST))
    assert batch["image"].shape == (2, 224, 224, 3)


def test_dogs_cache_decodes_each_image_once(tmp_path, monkeypatch):
  decoded = []
  original = transforms.decode_rgb

  def counting_decode(encoded):
    tf.py_function(lambda: decoded.append(1) or 0, [], tf.int32)
    return original(encoded)

  monkeypatch.setattr(transforms, "decode_rgb", counting_decode)
  # A shuffle buffer smaller than the split must still read it to the end, or tf.data drops
  # the unfinished cache and decodes again next epoch.
  with mocked("stanford_dogs", tmp_path, shuffle_buffer_size=8) as config:
    take(data.create_train_iterator(config, 4, **ONE_HOST), 6 * 3)  # three epochs
  assert len(decoded) == TRAIN_SIZE


def test_unprepared_dataset_says_how_to_prepare(tmp_path):
  config = data.default_config()
  config.update({"dataset": "stanford_dogs", "data_dir": str(tmp_path)})
  with pytest.raises(tfds_pipeline.DatasetNotPreparedError,
                     match="python -m rap_flax.data.prepare stanford_dogs --source=DIR"):
    data.get_dataset_info(config)


def test_unknown_split_is_a_clear_error(tmp_path):
  with mocked("cifar10", tmp_path, eval_split="validation") as config:
    with pytest.raises(ValueError, match="cifar10 has no split 'validation'"):
      data.create_eval_iterator(config, 4, **ONE_HOST)
