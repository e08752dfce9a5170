"""Prepares the tfds datasets offline, from files the user already holds.

    python -m rap_flax.data.prepare stanford_dogs --source=DIR [--data_dir=DATA_DIR]
    python -m rap_flax.data.prepare imagenet2012 --source=DIR [--data_dir=DATA_DIR]
    python -m rap_flax.data.prepare imagenet_rein100 [--data_dir=DATA_DIR]
    python -m rap_flax.data.prepare cifar10 [--data_dir=DATA_DIR]   (downloads)

DIR for stanford_dogs holds images.tar + lists.tar, or Images/ + train_list.mat + test_list.mat;
for imagenet2012 it holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar. The ReIN subsets
are cut out of imagenet2012, which must be prepared in the same DATA_DIR first. Training then
uses config.data_dir = DATA_DIR (default: the tfds default, ~/tensorflow_datasets).
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile

from rap_flax.data import catalog

IMAGENET_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def _check_imagenet_source(source: str) -> None:
  from rap_flax.data.builders import SourceError

  for name in IMAGENET_FILES:
    path = os.path.join(source, name)
    if not os.path.isfile(path):
      raise SourceError(f"imagenet2012 needs {' and '.join(IMAGENET_FILES)} in --source; "
                        f"{path} does not exist.")
    if not tarfile.is_tarfile(path):
      raise SourceError(f"{path} is not a tar archive (damaged or incomplete download?).")


def prepare(dataset: str, source: str | None = None, data_dir: str | None = None):
  """Builds the tfds files of `dataset` in data_dir; returns the prepared tfds builder."""
  import tensorflow_datasets as tfds

  from rap_flax.data import builders

  if dataset not in catalog.TFDS_DATASETS:
    raise ValueError(f"Cannot prepare {dataset!r}; preparable datasets: "
                     f"{', '.join(catalog.TFDS_DATASETS)}.")
  needs_source = dataset in ("stanford_dogs", "imagenet2012")
  if needs_source and not source:
    raise ValueError(f"{dataset} is built from local files: pass --source=DIR. "
                     f"Usage: {catalog.TFDS_DATASETS[dataset].prepare_command}")
  if not needs_source and source:
    raise ValueError(f"{dataset} takes no --source.")
  download_config = None
  if dataset == "stanford_dogs":
    builders.dogs_layout(source)  # fail before tfds does, with a message naming the files
    builder = builders.StanfordDogsFromSource(data_dir=data_dir)
  elif dataset == "imagenet2012":
    _check_imagenet_source(source)
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
  elif dataset.startswith("imagenet_rein"):
    builder = builders.ImagenetRein(config=dataset[len("imagenet_"):], data_dir=data_dir)
  else:
    builder = tfds.builder(dataset, data_dir=data_dir)
  if needs_source:
    download_config = tfds.download.DownloadConfig(manual_dir=os.path.abspath(source))
  builder.download_and_prepare(download_config=download_config)
  return builder


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", choices=list(catalog.TFDS_DATASETS))
  parser.add_argument("--source", help="directory with the downloaded files (see above)")
  parser.add_argument("--data_dir", help="tfds data_dir to write to (config.data_dir)")
  args = parser.parse_args(argv)
  from rap_flax.data.builders import SourceError

  try:
    builder = prepare(args.dataset, args.source, args.data_dir)
  except (SourceError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  sizes = ", ".join(f"{name}: {split.num_examples}" for name, split in builder.info.splits.items())
  print(f"Prepared {args.dataset} in {builder.data_dir} ({sizes}). "
        f"Train with config.dataset={args.dataset!r}, config.data_dir={args.data_dir!r}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
