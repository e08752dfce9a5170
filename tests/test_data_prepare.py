"""Offline preparation from generated sources: Stanford Dogs (both layouts), ImageNet tars and
the ReIN subsets, end to end through the data API; bad sources give clear errors."""

import os

import numpy as np
import pytest
tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("scipy.io")

from rap_flax import data  # noqa: E402
from rap_flax.data import catalog, prepare  # noqa: E402
from rap_flax.data.builders import SourceError  # noqa: E402
from tests import fake_sources  # noqa: E402

NUM_DOGS_CLASSES = 120  # tfds stanford_dogs declares exactly 120 classes
ONE_HOST = dict(process_index=0, process_count=1)


def make_dogs_source(root, layout):
  """120 breeds whose wnids are NOT in creation order; class c's images have red = 2c.

  Train: one image per breed; test: one image for each of the first 6 breeds.
  Returns the synset directory names in creation order.
  """
  wnid_numbers = np.random.default_rng(0).permutation(NUM_DOGS_CLASSES) + 85620
  synsets = [f"n02{number:06d}-Breed_{c}" for c, number in enumerate(wnid_numbers)]
  lists = {"train": [], "test": []}
  images = {}
  for c, synset in enumerate(synsets):
    for k, split in enumerate(("train", "test") if c < 6 else ("train",)):
      path = f"{synset}/{synset.split('-')[0]}_{k}.jpg"
      images[path] = fake_sources.flat_jpeg((2 * c, 100, 50), shape=(20 + c % 5, 24))
      lists[split].append(path)
  fake_sources.write_stanford_dogs_source(str(root), images, lists, layout)
  return synsets


@pytest.mark.parametrize("layout", ["upstream", "tars"])
def test_stanford_dogs_prepares_and_loads_with_labels_in_synset_order(layout, tmp_path):
  synsets = make_dogs_source(tmp_path / "source", layout)
  data_dir = str(tmp_path / "tfds")
  _, skipped = prepare.prepare("stanford_dogs", str(tmp_path / "source"), data_dir)
  assert skipped == []
  config = data.default_config()
  config.update(dict(dataset="stanford_dogs", data_dir=data_dir, image_size=16))
  assert data.get_dataset_info(config) == data.DatasetInfo("stanford_dogs", 120, 120, 6, 16)
  sorted_synsets = sorted(synsets)
  assert sorted_synsets != synsets
  expected_label = lambda red: sorted_synsets.index(synsets[int(np.round(red * 255 / 2))])

  to_input = data.model_input(config)  # uint8 -> [0, 1]
  evals = list(data.create_eval_iterator(config, 4, **ONE_HOST))
  reds = np.concatenate([to_input(b["image"])[b["mask"], 8, 8, 0] for b in evals])
  labels = np.concatenate([b["label"][b["mask"]] for b in evals])
  assert len(labels) == 6
  assert labels.tolist() == [expected_label(red) for red in reds]

  batch = next(data.create_train_iterator(config, 120, **ONE_HOST))  # one full epoch
  assert sorted(batch["label"].tolist()) == list(range(120))
  brightness = to_input(batch["image"])[:, 8, 8, 1] * 255 / 100  # green was 100 everywhere
  assert 0.6 - 0.02 <= brightness.min() and brightness.max() <= 1.4 + 0.02
  assert brightness.max() - brightness.min() > 0.5


def test_dogs_source_errors_name_the_expected_files(tmp_path):
  with pytest.raises(SourceError, match=r"images\.tar \+ lists\.tar.*Images/ \+ train_list\.mat"):
    prepare.prepare("stanford_dogs", str(tmp_path), str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="pass --source=DIR"):
    prepare.prepare("stanford_dogs", None, str(tmp_path / "tfds"))

  make_dogs_source(tmp_path / "broken", "upstream")
  (tmp_path / "broken" / "test_list.mat").write_bytes(b"not a mat file")
  with pytest.raises(SourceError, match="test_list.mat is not a readable Stanford Dogs list"):
    prepare.prepare("stanford_dogs", str(tmp_path / "broken"), str(tmp_path / "tfds"))

  synsets = make_dogs_source(tmp_path / "missing", "upstream")
  os.remove(tmp_path / "missing" / "Images" / synsets[3] / f"{synsets[3].split('-')[0]}_0.jpg")
  with pytest.raises(SourceError, match="1 images listed in the .mat files are missing"):
    prepare.prepare("stanford_dogs", str(tmp_path / "missing"), str(tmp_path / "tfds"))

  make_dogs_source(tmp_path / "tars", "tars")
  (tmp_path / "tars" / "lists.tar").write_bytes(b"\0garbage")
  with pytest.raises(SourceError, match="Cannot read .*lists.tar"):
    prepare.prepare("stanford_dogs", str(tmp_path / "tars"), str(tmp_path / "tfds"))


def test_imagenet_source_errors_name_the_expected_files(tmp_path):
  with pytest.raises(SourceError, match="ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"):
    prepare.prepare("imagenet2012", str(tmp_path), str(tmp_path))
  (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(b"truncated")
  (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"truncated")
  with pytest.raises(SourceError, match="ILSVRC2012_img_train.tar is not a tar archive"):
    prepare.prepare("imagenet2012", str(tmp_path), str(tmp_path / "tfds"))
  with pytest.raises(SourceError, match="needs imagenet2012 prepared .* first"):
    prepare.prepare("imagenet_rein30", None, str(tmp_path / "tfds"))


# Train classes: two of ReIN-30 and one outside it. The fake validation tar holds the first 70
# validation images, whose labels tfds knows; #45 and #69 belong to ReIN-30 classes.
REIN30_TRAIN_CLASSES = ("n03950228", "n04370456")
OTHER_CLASS = "n01440764"
NUM_VAL = 70


def make_ilsvrc_tars(root):
  classes = (OTHER_CLASS,) + REIN30_TRAIN_CLASSES
  train = {wnid: [fake_sources.flat_jpeg((40 * c, 10 * k, 0), (16, 16)) for k in range(2)]
           for c, wnid in enumerate(classes)}
  validation = [fake_sources.flat_jpeg((k, 0, 0), (12, 12)) for k in range(1, NUM_VAL + 1)]
  fake_sources.write_ilsvrc_tars(str(root), train, validation)


def test_imagenet_and_rein_subset_prepare_end_to_end(tmp_path):
  make_ilsvrc_tars(tmp_path / "ilsvrc")
  data_dir = str(tmp_path / "tfds")
  imagenet, _ = prepare.prepare("imagenet2012", str(tmp_path / "ilsvrc"), data_dir)
  assert imagenet.info.splits["train"].num_examples == 6
  assert imagenet.info.splits["validation"].num_examples == NUM_VAL
  rein, _ = prepare.prepare("imagenet_rein30", None, data_dir)
  wnids = catalog.imagenet_subset_wnids(30)
  assert rein.info.features["label"].names == wnids
  examples = {split: list(tfds.as_numpy(rein.as_dataset(split=split)))
              for split in ("train", "validation")}
  train_labels = sorted((ex["file_name"].decode(), ex["label"]) for ex in examples["train"])
  assert train_labels == sorted((f"{wnid}_{k}.JPEG", wnids.index(wnid))
                                for wnid in REIN30_TRAIN_CLASSES for k in range(2))
  val_labels = sorted((ex["file_name"].decode(), ex["label"]) for ex in examples["validation"])
  assert val_labels == [("ILSVRC2012_val_00000046.JPEG", wnids.index("n03950228")),
                        ("ILSVRC2012_val_00000070.JPEG", wnids.index("n04370456"))]

  config = data.default_config()
  config.update(dict(dataset="imagenet_rein30", data_dir=data_dir, image_size=8))
  assert data.get_dataset_info(config) == data.DatasetInfo("imagenet_rein30", 30, 4, 2, 8)
  batch = next(data.create_train_iterator(config, 4, **ONE_HOST))
  assert sorted(batch["label"].tolist()) == sorted(wnids.index(w) for w in REIN30_TRAIN_CLASSES
                                                   for _ in range(2))


def test_an_undecodable_image_that_reaches_training_is_named(tmp_path, monkeypatch):
  synsets = make_dogs_source(tmp_path / "source", "upstream")
  bad = tmp_path / "source" / "Images" / synsets[5] / f"{synsets[5].split('-')[0]}_0.jpg"
  bad.write_bytes(bad.read_bytes()[:100])
  from rap_flax.data import builders  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(builders, "undecodable_images", lambda *args, **kwargs: [])
  prepare.prepare("stanford_dogs", str(tmp_path / "source"), str(tmp_path / "tfds"))
  config = data.default_config()
  config.update(dict(dataset="stanford_dogs", data_dir=str(tmp_path / "tfds"), image_size=16))
  with pytest.raises(ValueError, match=rf"Image '.*{bad.name}' of stanford_dogs cannot be "
                     r"decoded \(jpeg::Uncompress failed.*\). Prepare the dataset again"):
    next(data.create_train_iterator(config, 120, **ONE_HOST))
