"""Prepares the tfds datasets offline, from files the user already holds.

    python -m rap_flax.data.prepare stanford_dogs --source=DIR [--data_dir=DATA_DIR] [--strict]
    python -m rap_flax.data.prepare imagenet2012 --source=DIR [--data_dir=DATA_DIR]
    python -m rap_flax.data.prepare imagenet_rein100 [--data_dir=DATA_DIR]
    python -m rap_flax.data.prepare cifar10 [--data_dir=DATA_DIR]   (downloads)
    python -m rap_flax.data.prepare --config=configs/dogs_srap.py --source=DIR

DIR for stanford_dogs holds images.tar + lists.tar, or Images/ + train_list.mat + test_list.mat;
for imagenet2012 it holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar. The ReIN subsets
are cut out of imagenet2012, which must be prepared in the same DATA_DIR first. With --config,
the dataset and DATA_DIR come from config.data. Training then uses config.data.data_dir =
DATA_DIR (default: the tfds default, ~/tensorflow_datasets).

Stanford Dogs images are decoded first, with the decoder training uses: undecodable ones are
left out and listed (paths printed, and written to DATA_DIR/stanford_dogs_skipped.txt), or
with --strict stop the preparation.

A preparation cleans up after itself: tfds's temporary directories go, a failed one leaves no
empty directories behind, and a rerun removes (and names) the DATA_DIR/<dataset>/incomplete.*
that a killed run left. One preparation per dataset and DATA_DIR at a time (it holds
DATA_DIR/.<dataset>.prepare.lock meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from typing import Iterator

from absl import flags, logging

from rap_flax import cli, files, locks
from rap_flax.data import catalog

IMAGENET_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag("Optional: the dataset and data_dir of this config's config.data.",
                         required=False)
  flags.DEFINE_string("source", None, "Directory with the downloaded files (see above).")
  flags.DEFINE_string("data_dir", None, "tfds data_dir to write to (config.data.data_dir).")
  flags.DEFINE_bool("strict", False, "Stop on an undecodable image instead of leaving it out.")


def _check_imagenet_source(source: str) -> None:
  from rap_flax.data.builders import SourceError  # pylint: disable=g-import-not-at-top  # imports tfds

  for name in IMAGENET_FILES:
    path = os.path.join(source, name)
    if not os.path.isfile(path):
      raise SourceError(f"imagenet2012 needs {' and '.join(IMAGENET_FILES)} in --source; "
                        f"{path} does not exist.")
    if not tarfile.is_tarfile(path):
      raise SourceError(f"{path} is not a tar archive (damaged or incomplete download?).")


def prepare(dataset: str, source: str | None = None, data_dir: str | None = None,
            strict: bool = False):
  """Builds the tfds files of `dataset` in data_dir; returns (tfds builder, skipped images)."""
  with _private_tempdir():
    return _prepare(dataset, source, data_dir, strict)


def _prepare(dataset: str, source: str | None, data_dir: str | None, strict: bool):
  from rap_flax.data.tf_import import tfds  # pylint: disable=g-import-not-at-top

  from rap_flax.data import builders  # pylint: disable=g-import-not-at-top  # imports tfds

  source, data_dir = files.expand(source), files.expand(data_dir)
  if dataset not in catalog.TFDS_DATASETS:
    raise ValueError(f"Cannot prepare {dataset!r}; preparable datasets: "
                     f"{', '.join(catalog.TFDS_DATASETS)}.")
  needs_source = dataset in ("stanford_dogs", "imagenet2012")
  if needs_source and not source:
    raise ValueError(f"{dataset} is built from local files: pass --source=DIR. "
                     f"Usage: {catalog.TFDS_DATASETS[dataset].prepare_command}")
  if not needs_source and source:
    raise ValueError(f"{dataset} takes no --source.")
  download_config, skipped = None, []
  if dataset == "stanford_dogs":
    dogs = builders.find_dogs_source(source)  # fails before tfds does, naming the files
    listed = set(dogs.train_files + dogs.test_files)
    skipped = [name for name in builders.undecodable_images(dogs.iter_images(), len(listed))
               if name.split("Images/", 1)[-1] in listed]
    if skipped and strict:
      raise builders.SourceError(f"{len(skipped)} image(s) cannot be decoded, e.g. "
                                 f"{skipped[:3]}; fix or remove them, or leave out --strict.")
    builder = builders.StanfordDogsFromSource(data_dir=data_dir, skip=skipped)
  elif dataset == "imagenet2012":
    _check_imagenet_source(source)
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
  elif dataset.startswith("imagenet_rein"):
    builder = builders.ImagenetRein(config=dataset[len("imagenet_"):], data_dir=data_dir)
  else:
    builder = tfds.builder(dataset, data_dir=data_dir)
  if needs_source:
    download_config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(source))
  root = os.fspath(builder.data_dir_root)
  in_use = (f"{dataset} is being prepared into {root} by another process ({{holder}}); wait "
            "for it to finish.")
  created = _new_directories(builder)
  try:
    with locks.DirectoryLock(root, f".{dataset}.prepare.lock", in_use):
      _remove_incomplete(builder)
      builder.download_and_prepare(download_config=download_config)
  finally:
    _remove_if_empty(created)
  return builder, skipped


def _new_directories(builder) -> list[str]:
  """The directories a preparation may create (DATA_DIR, downloads/extracted, the dataset's)
  that do not exist yet, deepest first."""
  root = os.fspath(builder.data_dir_root)
  candidates = [os.path.join(root, "downloads", "extracted"), os.path.join(root, "downloads")]
  path = os.path.dirname(os.fspath(builder.data_dir))
  while len(path) > len(root):
    candidates.append(path)
    path = os.path.dirname(path)
  return [path for path in candidates + [root] if not os.path.exists(path)]


def _remove_if_empty(directories: list[str]) -> None:
  for directory in directories:  # deepest first
    with contextlib.suppress(OSError):  # not empty (or gone): kept
      os.rmdir(directory)


@contextlib.contextmanager
def _private_tempdir() -> Iterator[None]:
  """Points tempfile at a directory of this preparation's own, removed afterwards: tfds
  leaves an empty /tmp/tmp*tfds behind at every builder it creates otherwise."""
  previous = tempfile.tempdir
  with tempfile.TemporaryDirectory(prefix="rap_flax_prepare_") as scratch:
    tempfile.tempdir = scratch
    try:
      yield
    finally:
      tempfile.tempdir = previous


def _remove_incomplete(builder) -> None:
  """Removes what a killed preparation of this dataset left (tfds writes into incomplete.*
  and renames it when complete; the lock says that no preparation is running now)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  parent = os.path.dirname(os.fspath(builder.data_dir))
  if not os.path.isdir(parent):
    return
  for name in sorted(os.listdir(parent)):
    if name.startswith(tfds.core.constants.INCOMPLETE_PREFIX):
      path = os.path.join(parent, name)
      size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
      logging.info("Removed %s (%.1f MB), left by an interrupted preparation.", path,
                   size / 1e6)


def main(argv):
  config = cli.load_config() if FLAGS["config"].present else None
  if len(argv) > 2:
    raise ValueError(f"Unexpected arguments: {argv[2:]}.")
  dataset = argv[1] if len(argv) == 2 else config.data.dataset if config else None
  if not dataset:
    raise ValueError(f"Name the dataset ({', '.join(catalog.TFDS_DATASETS)}) or pass "
                     "--config=configs/NAME.py.")
  data_dir = FLAGS.data_dir or (config.data.data_dir if config else None)
  builder, skipped = prepare(dataset, FLAGS.source, data_dir, FLAGS.strict)
  sizes = ", ".join(f"{name}: {split.num_examples}" for name, split in builder.info.splits.items())
  if skipped:
    listing = os.path.join(builder.data_dir_root, f"{dataset}_skipped.txt")
    with files.atomic_output(listing) as tmp, open(tmp, "w") as f:
      f.write("\n".join(skipped) + "\n")
    print(f"Left out {len(skipped)} undecodable image(s) (all listed in {listing}):")
    for name in skipped[:10]:
      print(f"  {name}")
  print(f"Prepared {dataset} in {builder.data_dir} ({sizes}). Train with "
        f"--config.data.dataset={dataset} --config.data.data_dir={builder.data_dir_root}.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
