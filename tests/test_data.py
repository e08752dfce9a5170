"""Tests of the numpy datasets (digits, synthetic) and the backend-free data API rules."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rap_flax import data
from rap_flax.data import digits, randomness

ONE_HOST = dict(process_index=0, process_count=1)


def make_config(dataset="digits", **overrides):
  config = data.default_config()
  config.update({"dataset": dataset, "image_size": 32, **overrides})
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_import_does_not_import_tensorflow():
  code = ("import sys; from rap_flax import data; "
          "c = data.default_config(); c.image_size = 16; "
          "next(data.create_train_iterator(c, 8, process_index=0, process_count=1)); "
          "next(data.create_eval_iterator(c, 8, process_index=0, process_count=1)); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_digits_info_and_batches():
  config = make_config()
  info = data.get_dataset_info(config)
  assert info == data.DatasetInfo("digits", 10, 1437, 360, 32)
  batch = next(data.create_train_iterator(config, 64, **ONE_HOST))
  assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert batch["mask"].dtype == bool and batch["mask"].all()
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].max() > 0.9  # Strokes reach full intensity.
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])  # grey
  assert set(np.unique(batch["label"])) <= set(range(10))


def test_digits_split_is_fixed_and_stratified():
  train_x, train_y, eval_x, eval_y = digits._load(8)
  assert len(train_y) + len(eval_y) == 1797
  assert abs(np.bincount(train_y) / len(train_y) - np.bincount(eval_y) / len(eval_y)).max() < 0.01
  digits._load.cache_clear()
  np.testing.assert_array_equal(digits._load(8)[3], eval_y)


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_eval_split_train_evaluates_the_unaugmented_training_images(dataset):
  """What an int8 export calibrates on: the train split through the eval pipeline."""
  config = make_config(dataset, image_size=16, eval_split="train")
  info = data.get_dataset_info(config)
  assert info.num_eval == info.num_train == data.get_dataset_info(make_config(dataset)).num_train
  first = next(data.create_eval_iterator(config, 32, **ONE_HOST))
  again = next(data.create_eval_iterator(config, 32, **ONE_HOST))
  default = next(data.create_eval_iterator(make_config(dataset, image_size=16), 32, **ONE_HOST))
  assert_batches_equal(first, again)
  assert not np.array_equal(first["image"], default["image"])
  if dataset == "digits":
    np.testing.assert_array_equal(first["image"][..., 0], digits._load(16)[0][:32])


def test_digits_upscaling_matches_pil_bilinear():
  from sklearn.datasets import load_digits

  first = load_digits().images[0].astype(np.float32) / 16
  ours = np.einsum("oh,hw,pw->op", digits.bilinear_matrix(8, 32), first,
                   digits.bilinear_matrix(8, 32))
  pil = np.asarray(Image.fromarray(first, mode="F").resize((32, 32), Image.BILINEAR))
  np.testing.assert_allclose(ours, pil, atol=1e-5)


def test_digits_augmentation_is_a_bounded_shift():
  images = np.random.default_rng(0).random((16, 32, 32, 3)).astype(np.float32)
  uniforms = np.random.default_rng(1).random((16, 2))
  shifted = digits.random_shift(images, uniforms)
  pad = 4
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  for i in range(16):
    matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
               if np.array_equal(padded[i, dy:dy + 32, dx:dx + 32], shifted[i])]
    assert len(matches) == 1
  assert not np.array_equal(shifted, images)


def test_eval_pass_is_ordered_padded_and_complete():
  config = make_config()
  batches = list(data.create_eval_iterator(config, 128, **ONE_HOST))
  assert len(batches) == 3
  masks = np.stack([b["mask"] for b in batches])
  assert masks.sum() == 360 and masks[:2].all()
  assert masks[2, :104].all() and not masks[2, 104:].any()
  assert (batches[2]["image"][104:] == 0).all()
  again = list(data.create_eval_iterator(config, 128, **ONE_HOST))
  for a, b in zip(batches, again):
    assert_batches_equal(a, b)
  _, _, eval_x, eval_y = digits._load(32)
  np.testing.assert_array_equal(batches[0]["label"], eval_y[:128])
  np.testing.assert_array_equal(batches[0]["image"][..., 1], eval_x[:128])


def test_train_is_deterministic_and_seed_dependent():
  first = take(data.create_train_iterator(make_config(), 32, **ONE_HOST), 3)
  second = take(data.create_train_iterator(make_config(), 32, **ONE_HOST), 3)
  other = take(data.create_train_iterator(make_config(), 32, seed=1, **ONE_HOST), 3)
  for a, b in zip(first, second):
    assert_batches_equal(a, b)
  assert not np.array_equal(first[0]["label"], other[0]["label"])


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_resume_reproduces_the_uninterrupted_run(dataset):
  config = make_config(dataset, synthetic_num_train=100)
  batch_size = 32  # digits: 44 steps/epoch; synthetic: 3 steps/epoch.
  uninterrupted = take(data.create_train_iterator(config, batch_size, **ONE_HOST), 50)
  for start in (1, 3, 44, 47):
    resumed = data.create_train_iterator(config, batch_size, start_step=start, **ONE_HOST)
    for step in range(start, 50):
      assert_batches_equal(next(resumed), uninterrupted[step])


def synthetic_index(config, split="train"):
  """Maps image bytes back to the example index, to see which examples a batch holds."""
  dataset = data.synthetic.build(config)
  source = dataset.train if split == "train" else dataset.eval
  images, _ = source.take(np.arange(source.num_examples))
  return {image.tobytes(): i for i, image in enumerate(images)}


def batch_indices(batch, index):
  return [index[image.tobytes()] for image, keep in zip(batch["image"], batch["mask"]) if keep]


def test_each_epoch_visits_every_example_of_the_host_once():
  config = make_config("synthetic", image_size=4, synthetic_num_train=40)
  index = synthetic_index(config)
  seen = {0: [], 1: []}
  for host in (0, 1):
    batches = take(data.create_train_iterator(config, 5, process_index=host, process_count=2), 8)
    epochs = [sum((batch_indices(b, index) for b in batches[e * 4:(e + 1) * 4]), []) for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(host * 20, host * 20 + 20))
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    seen[host] = epochs[0]
  assert not set(seen[0]) & set(seen[1])


@pytest.mark.parametrize("num_hosts, batch_size", [(3, 4), (4, 8), (64, 2)])
def test_eval_host_shards_are_disjoint_cover_and_stay_in_lockstep(num_hosts, batch_size):
  config = make_config("synthetic", image_size=4, synthetic_num_eval=27)
  index = synthetic_index(config, "eval")
  per_host = [list(data.create_eval_iterator(config, batch_size, process_index=h,
                                             process_count=num_hosts))
              for h in range(num_hosts)]
  assert len({len(batches) for batches in per_host}) == 1
  assert sum(b["mask"].sum() for batches in per_host for b in batches) == 27
  covered = [i for batches in per_host for b in batches for i in batch_indices(b, index)]
  assert covered == list(range(27))  # disjoint, complete and in order
  assert all(b["image"].shape == (batch_size, 4, 4, 3) for bs in per_host for b in bs)


def test_synthetic_values():
  config = make_config("synthetic", image_size=8, synthetic_num_classes=7)
  assert data.get_dataset_info(config) == data.DatasetInfo("synthetic", 7, 1024, 256, 8)
  batch = next(data.create_train_iterator(config, 64, **ONE_HOST))
  assert batch["image"].shape == (64, 8, 8, 3) and batch["image"].dtype == np.float32
  assert 0 <= batch["image"].min() and batch["image"].max() < 1
  assert batch["label"].min() >= 0 and batch["label"].max() < 7
  assert len(np.unique(batch["label"])) > 1


@pytest.mark.parametrize("config, kwargs, message", [
    (make_config("mnist"), {}, "Unknown config.data.dataset='mnist'"),
    (make_config(), dict(batch_size=0), "batch_size must be a positive int"),
    (make_config(), dict(batch_size=2000), "exceeds the 1437 training examples"),
    (make_config(), dict(process_index=2, process_count=2), "process_index=2"),
    (make_config(), dict(start_step=-1), "start_step must be >= 0"),
    (make_config("synthetic", synthetic_num_classes=0), {}, "synthetic_num_classes"),
    (make_config(eval_split="test"), {}, "eval_split='test': digits has the splits train, "
     "validation"),
])
def test_bad_input_gets_a_clear_error(config, kwargs, message):
  kwargs = {"batch_size": 8, "process_index": 0, "process_count": 1, **kwargs}
  with pytest.raises(ValueError, match=message):
    data.create_train_iterator(config, **kwargs)


def test_example_uniforms_are_stateless():
  a = randomness.example_uniforms(3, 2, np.arange(10), 4)
  b = randomness.example_uniforms(3, 2, np.arange(5, 10), 4)
  np.testing.assert_array_equal(a[5:], b)
  assert a.shape == (10, 4) and (0 <= a).all() and (a < 1).all()
  assert not np.array_equal(a, randomness.example_uniforms(3, 3, np.arange(10), 4))
  assert not np.array_equal(a, randomness.example_uniforms(4, 2, np.arange(10), 4))
  # Roughly uniform: 4,000 draws, mean within 5 standard errors of 0.5.
  many = randomness.example_uniforms(0, 0, np.arange(1000), 4)
  assert abs(many.mean() - 0.5) < 5 * (1 / 12 / many.size) ** 0.5
