"""tfds builders that prepare datasets from files the user already holds.

- StanfordDogsFromSource writes the standard tfds `stanford_dogs` dataset (same name, version
  and features, so tfds.builder("stanford_dogs") reads it) from the Stanford archives or from
  the upstream layout, instead of downloading. Bounding boxes are not read: the upstream
  training never uses them, so `objects` is left empty.
- ImagenetRein (registered as `imagenet_rein/rein{30,50,100,150,200}`) copies the authors'
  ImageNet subsets out of a prepared `imagenet2012` in the same data_dir, relabelled 0..N-1 in
  sorted wnid order. A separate dataset keeps epochs from scanning all 1000 classes and gives
  exact split sizes for sharding and eval padding.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import itertools
import os
import pathlib
import tarfile
import xml.etree.ElementTree as ET
from typing import Callable, Iterator, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from rap_flax.data import catalog

DOGS_TAR_FILES = ("images.tar", "lists.tar")
DOGS_DIR_FILES = ("Images/", "train_list.mat", "test_list.mat")


class SourceError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class DogsSource:
  """The Stanford Dogs lists and a way to iterate over (path, encoded image) pairs."""

  train_files: list[str]  # "n02085620-Chihuahua/n02085620_10074.jpg", as in the .mat lists
  test_files: list[str]
  iter_images: Callable[[], Iterator[tuple[str, bytes]]]

  @property
  def label_names(self) -> list[str]:
    return sorted({path.split("/")[0].lower() for path in self.train_files})


def _mat_file_list(name: str, data: bytes) -> list[str]:
  import scipy.io

  try:
    contents = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    files = [str(path).replace("\\", "/") for path in contents["file_list"]]
  except Exception as error:  # scipy raises several types for a damaged file
    raise SourceError(f"{name} is not a readable Stanford Dogs list (a .mat file with a "
                      f"'file_list' entry): {error}") from error
  if not files:
    raise SourceError(f"{name} lists no images.")
  return files


def _check_all_present(listed: list[str], is_present: Callable[[str], bool], where: str) -> None:
  missing = [path for path in listed if not is_present(path)]
  if missing:
    raise SourceError(f"{len(missing)} images listed in the .mat files are missing from {where}, "
                      f"e.g. {missing[:3]}.")


def _tar_source(source: str) -> DogsSource:
  images_tar, lists_tar = (os.path.join(source, name) for name in DOGS_TAR_FILES)
  try:
    with tarfile.open(lists_tar) as archive:
      lists = {os.path.basename(member.name): archive.extractfile(member).read()
               for member in archive.getmembers() if member.isfile()}
    with tarfile.open(images_tar) as archive:
      in_archive = {name.split("Images/", 1)[-1] for name in archive.getnames()}
  except (tarfile.TarError, OSError, EOFError) as error:
    raise SourceError(f"Cannot read {images_tar} / {lists_tar}: {error}. Re-download them from "
                      "http://vision.stanford.edu/aditya86/ImageNetDogs/.") from error
  for name in ("train_list.mat", "test_list.mat"):
    if name not in lists:
      raise SourceError(f"{lists_tar} has no {name}; it holds {sorted(lists)}.")
  train, test = (_mat_file_list(f"{lists_tar}:{name}", lists[name])
                 for name in ("train_list.mat", "test_list.mat"))
  _check_all_present(train + test, in_archive.__contains__, images_tar)

  def iter_images():
    with tarfile.open(images_tar) as archive:
      for member in archive:
        if member.isfile():
          yield member.name, archive.extractfile(member).read()

  return DogsSource(train, test, iter_images)


def _dir_source(source: str) -> DogsSource:
  images_dir = os.path.join(source, "Images")
  train, test = (_mat_file_list(path, pathlib.Path(path).read_bytes())
                 for path in (os.path.join(source, "train_list.mat"),
                              os.path.join(source, "test_list.mat")))
  _check_all_present(train + test, lambda path: os.path.isfile(os.path.join(images_dir, path)),
                     images_dir)

  def iter_images():
    for path in sorted(set(train + test)):
      with open(os.path.join(images_dir, path), "rb") as f:
        yield f"Images/{path}", f.read()

  return DogsSource(train, test, iter_images)


def dogs_layout(source: str) -> str:
  """"tars" or "upstream", whichever set of Stanford Dogs files `source` holds."""
  has = lambda name: os.path.exists(os.path.join(source, name.rstrip("/")))
  if all(has(name) for name in DOGS_TAR_FILES):
    return "tars"
  if all(has(name) for name in DOGS_DIR_FILES):
    return "upstream"
  found = sorted(os.listdir(source)) if os.path.isdir(source) else "(not a directory)"
  raise SourceError(
      f"{source} is not a Stanford Dogs source. Expected either {' + '.join(DOGS_TAR_FILES)} "
      f"(from http://vision.stanford.edu/aditya86/ImageNetDogs/) or the upstream layout "
      f"{' + '.join(DOGS_DIR_FILES)}; found: {found}.")


def find_dogs_source(source: str) -> DogsSource:
  """Reads and checks the lists of a Stanford Dogs source in either supported layout."""
  return _tar_source(source) if dogs_layout(source) == "tars" else _dir_source(source)


def undecodable_images(images: Iterator[tuple[str, bytes]], total: int,
                       workers: int = os.cpu_count() or 1, chunk: int = 256) -> list[str]:
  """Names of the images that the training pipeline's decoder rejects, decoding all of them
  in parallel (TensorFlow's eager ops release the GIL) with a progress line every ~10%."""
  from rap_flax.data import transforms  # pylint: disable=g-import-not-at-top

  def rejected(item: tuple[str, bytes]) -> str | None:
    name, payload = item
    try:
      transforms.decode_rgb(tf.constant(payload))
    except tf.errors.OpError:
      return name
    return None

  bad, done, report_every = [], 0, max(chunk, total // 10)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    while batch := list(itertools.islice(images, chunk)):
      bad.extend(name for name in pool.map(rejected, batch) if name)
      done += len(batch)
      if done // report_every != (done - len(batch)) // report_every or done == total:
        logging.info("Decoded %d/%d images: %d undecodable so far.", done, total, len(bad))
  return bad


class StanfordDogsFromSource(tfds.builder_cls("stanford_dogs"), skip_registration=True):
  """The standard tfds `stanford_dogs` from local files, without the images in `skip`."""
  name = "stanford_dogs"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "manual_dir holds images.tar + lists.tar, or Images/ + train_list.mat + test_list.mat.")

  def __init__(self, *, skip: Sequence[str] = (), **kwargs):
    self._skip = {os.path.basename(path) for path in skip}
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    source = find_dogs_source(os.fspath(dl_manager.manual_dir))
    self.info.features["label"].names = source.label_names
    # Annotations are not read; an empty tree makes the upstream generator emit no boxes.
    no_boxes = collections.defaultdict(lambda: ET.ElementTree(ET.Element("annotation")))
    return {
        split: self._generate_examples(
            source.iter_images(),
            {os.path.basename(path) for path in files} - self._skip, no_boxes)
        for split, files in (("train", source.train_files), ("test", source.test_files))
    }


class ImagenetRein(tfds.core.GeneratorBasedBuilder):
  """The authors' ImageNet subsets, copied out of a prepared imagenet2012."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=f"rein{size}",
                                             description=f"ReIN-{size}: {size} ImageNet classes")
                     for size in catalog.REIN_SIZES]

  def _wnids(self) -> list[str]:
    return catalog.imagenet_subset_wnids(int(self.builder_config.name[len("rein"):]))

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=self._wnids()),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/")

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from imagenet2012 in the same data_dir.
    imagenet = tfds.builder("imagenet2012", data_dir=os.fspath(self.data_dir_root))
    if not imagenet.is_prepared():
      raise SourceError(
          f"imagenet_rein needs imagenet2012 prepared in {self.data_dir_root} first: "
          f"{catalog.TFDS_DATASETS['imagenet2012'].prepare_command}")
    names = imagenet.info.features["label"].names
    unknown = sorted(set(self._wnids()) - set(names))
    if unknown:
      raise SourceError(f"wnids {unknown[:5]} of {self.builder_config.name} are not ImageNet "
                        "classes; the subset list is damaged.")
    return {split: self._generate_examples(imagenet, split)
            for split in ("train", "validation") if split in imagenet.info.splits}

  def _generate_examples(self, imagenet, split):
    names = imagenet.info.features["label"].names
    new_label = [-1] * len(names)
    for label, wnid in enumerate(self._wnids()):
      new_label[names.index(wnid)] = label
    table = tf.constant(new_label, tf.int64)
    examples = imagenet.as_dataset(split=split, shuffle_files=False,
                                   decoders={"image": tfds.decode.SkipDecoding()})
    examples = examples.map(lambda ex: {**ex, "label": tf.gather(table, ex["label"])})
    examples = examples.filter(lambda ex: ex["label"] >= 0)
    for example in examples.as_numpy_iterator():
      file_name = example["file_name"].decode()
      yield file_name, {"image": example["image"], "label": int(example["label"]),
                        "file_name": file_name}
