"""The tfds-backed datasets: where they come from and how to prepare them (no tensorflow here)."""

from __future__ import annotations

import dataclasses
import importlib.resources

REIN_SIZES = (30, 50, 100, 150, 200)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
  name: str  # config.data.dataset
  tfds_name: str  # tfds builder name, with its builder config if any
  num_classes: int
  image_size: int  # default when config.data.image_size is unset
  train_split: str
  eval_split: str
  preprocessing: str  # "dogs" | "imagenet" | "cifar": the family of upstream transforms
  cacheable: bool  # small enough to keep the decoded training images in memory
  prepare_command: str


def _imagenet_subset(size: int) -> TfdsDataset:
  return TfdsDataset(
      f"imagenet_rein{size}", f"imagenet_rein/rein{size}", size, 224, "train", "validation",
      "imagenet", False,
      f"python -m rap_flax.data.prepare imagenet_rein{size} --data_dir=DATA_DIR  "
      "(after preparing imagenet2012 in the same DATA_DIR)")


TFDS_DATASETS: dict[str, TfdsDataset] = {
    spec.name: spec for spec in [
        TfdsDataset("cifar10", "cifar10", 10, 32, "train", "test", "cifar", True,
                    "python -m rap_flax.data.prepare cifar10 --data_dir=DATA_DIR  (downloads)"),
        TfdsDataset("cifar100", "cifar100", 100, 32, "train", "test", "cifar", True,
                    "python -m rap_flax.data.prepare cifar100 --data_dir=DATA_DIR  (downloads)"),
        TfdsDataset("stanford_dogs", "stanford_dogs", 120, 224, "train", "test", "dogs", True,
                    "python -m rap_flax.data.prepare stanford_dogs --source=DIR "
                    "--data_dir=DATA_DIR  (DIR holds images.tar + lists.tar, or Images/ + "
                    "train_list.mat + test_list.mat)"),
        TfdsDataset("imagenet2012", "imagenet2012", 1000, 224, "train", "validation", "imagenet",
                    False,
                    "python -m rap_flax.data.prepare imagenet2012 --source=DIR "
                    "--data_dir=DATA_DIR  (DIR holds ILSVRC2012_img_train.tar and "
                    "ILSVRC2012_img_val.tar)"),
        *(_imagenet_subset(size) for size in REIN_SIZES),
    ]
}


def imagenet_subset_wnids(size: int) -> list[str]:
  """Sorted wnids of the authors' ReIN-<size> subset; label i is the i-th of them."""
  if size not in REIN_SIZES:
    raise ValueError(f"No ImageNet subset of {size} classes; sizes are {REIN_SIZES}.")
  text = importlib.resources.files("rap_flax.data").joinpath(
      "imagenet_subsets", f"ReIN{size}.txt").read_text()
  wnids = sorted(line.strip() for line in text.splitlines() if line.strip())
  if len(wnids) != size or len(set(wnids)) != size:
    raise ValueError(f"ReIN{size}.txt must list {size} distinct wnids, found {len(set(wnids))}.")
  return wnids
