"""Training-input throughput per CPU core: rap_flax.data (tf.data) vs the upstream transforms.

The baseline does what the upstream torchvision pipelines do per image, with PIL: decode, the
train transforms (pil_reference.dogs_train / imagenet_train), stack into a batch. Ours is the real
pipeline, data.create_train_iterator, over tfds datasets prepared from the same generated JPEGs.
The whole process is pinned to one core, so both figures are images/s per core.

Dogs: upstream decodes and resizes every image every epoch; ours caches the 256x256 images after
the first epoch, so the steady-state epochs only crop, flip and scale brightness. Both the first
epoch and the cached epochs are reported; the ratio uses the cached ones (every epoch but one).

    python benchmarks/input_pipeline.py [--output benchmarks/results/input_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

# Pin before numpy/tensorflow start their thread pools, which size themselves to the CPU set.
_CORE = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {_CORE})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rap_flax import data  # noqa: E402
from rap_flax.data import catalog, pil_reference, prepare, testing  # noqa: E402

# Typical photo sizes (height, width) of Stanford Dogs / ImageNet images.
SHAPES = [(375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 300), (480, 640),
          (360, 480)]
DOGS_CLASSES = 120
IMAGENET_CLASSES = 8


def generated_jpegs(count: int, seed: int) -> list[bytes]:
  return [testing.photo_like_jpeg(*SHAPES[i % len(SHAPES)], seed=seed + i) for i in range(count)]


def prepare_dogs(root: str, per_class: int) -> list[bytes]:
  images = generated_jpegs(DOGS_CLASSES * per_class, seed=0)
  synsets = [f"n02{85620 + c:06d}-Breed_{c}" for c in range(DOGS_CLASSES)]
  paths = [f"{synsets[i % DOGS_CLASSES]}/{synsets[i % DOGS_CLASSES][:9]}_{i}.jpg"
           for i in range(len(images))]
  testing.write_stanford_dogs_source(
      os.path.join(root, "dogs"), dict(zip(paths, images)),
      {"train": paths, "test": paths[:DOGS_CLASSES]}, layout="upstream")
  prepare.prepare("stanford_dogs", os.path.join(root, "dogs"), os.path.join(root, "tfds"))
  return images


def prepare_imagenet(root: str, count: int) -> list[bytes]:
  images = generated_jpegs(count, seed=10_000)
  wnids = catalog.imagenet_subset_wnids(30)[:IMAGENET_CLASSES]  # any real wnids will do
  train = {wnid: images[c::len(wnids)] for c, wnid in enumerate(wnids)}
  testing.write_ilsvrc_tars(os.path.join(root, "ilsvrc"), train, images[:4])
  prepare.prepare("imagenet2012", os.path.join(root, "ilsvrc"), os.path.join(root, "tfds"))
  return images


class Timer:
  """Process CPU time (all threads) and wall time of a block.

  Images per CPU-second is the per-core figure; unlike wall time it does not depend on what
  else the machine is running. Wall time is reported alongside.
  """

  def __enter__(self):
    self.cpu, self.wall = time.process_time(), time.perf_counter()
    return self

  def __exit__(self, *exc_info):
    self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def pil_rates(transform, images: list[bytes], num_uniforms: int, batch_size: int,
              num_batches: int) -> tuple[float, float]:
  rng = np.random.default_rng(0)
  order = rng.permutation(num_batches * batch_size) % len(images)
  with Timer() as timer:
    for first in range(0, len(order), batch_size):
      np.stack([transform(images[i], rng.random(num_uniforms))
                for i in order[first:first + batch_size]])
  return len(order) / timer.cpu, len(order) / timer.wall


def ours_rates(iterator, batch_size: int, num_batches: int) -> tuple[float, float]:
  with Timer() as timer:
    for _ in range(num_batches):
      next(iterator)
  return num_batches * batch_size / timer.cpu, num_batches * batch_size / timer.wall


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dogs_per_class", type=int, default=16,
                      help="generated training images per breed (x120)")
  parser.add_argument("--imagenet_images", type=int, default=640)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=3,
                      help="alternating baseline/ours rounds; the median is reported")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                       "input_pipeline.json"))
  args = parser.parse_args()
  batch = args.batch_size
  with tempfile.TemporaryDirectory() as root:
    dogs_images = prepare_dogs(root, args.dogs_per_class)
    imagenet_images = prepare_imagenet(root, args.imagenet_images)
    tfds_dir = os.path.join(root, "tfds")
    config = lambda dataset: {"dataset": dataset, "data_dir": tfds_dir, "seed": 0, "cache": True,
                              "shuffle_buffer_size": 4096, "prefetch_batches": 2}
    one_host = dict(process_index=0, process_count=1)

    dogs_epoch = len(dogs_images) // batch
    dogs_it = data.create_train_iterator(config("stanford_dogs"), batch, **one_host)
    dogs_first_epoch = ours_rates(dogs_it, batch, dogs_epoch)
    imagenet_epoch = len(imagenet_images) // batch
    imagenet_it = data.create_train_iterator(config("imagenet2012"), batch, **one_host)
    next(imagenet_it)  # pipeline construction is not throughput

    rounds = {"dogs_pil": [], "dogs_ours_cached": [], "imagenet_pil": [], "imagenet_ours": []}
    for _ in range(args.rounds):  # alternate, so machine noise hits both sides alike
      rounds["dogs_pil"].append(pil_rates(pil_reference.dogs_train, dogs_images, 4, batch,
                                          dogs_epoch // 2))
      rounds["dogs_ours_cached"].append(ours_rates(dogs_it, batch, 2 * dogs_epoch))
      rounds["imagenet_pil"].append(pil_rates(
          pil_reference.imagenet_train, imagenet_images, 4 * pil_reference.RRC_ATTEMPTS + 1,
          batch, imagenet_epoch))
      rounds["imagenet_ours"].append(ours_rates(imagenet_it, batch, imagenet_epoch))

  cpu = {name: statistics.median(rate for rate, _ in values) for name, values in rounds.items()}
  wall = {name: statistics.median(rate for _, rate in values) for name, values in rounds.items()}
  report = {
      "benchmark": "input_pipeline",
      "unit": "images per CPU-second of the process, pinned to one core (= images/s per core); "
              "median over rounds. *_wall: images per wall-clock second, same runs",
      "cpu": platform.processor() or platform.machine(),
      "cpu_count_visible": os.cpu_count(),
      "batch_size": batch,
      "rounds": args.rounds,
      "image_shapes": SHAPES,
      "stanford_dogs_train": {
          "num_images": len(dogs_images),
          "pil_torchvision_transforms": cpu["dogs_pil"],
          "ours_cached_epochs": cpu["dogs_ours_cached"],
          "ours_first_epoch_decode_resize_cache": dogs_first_epoch[0],
          "ratio": cpu["dogs_ours_cached"] / cpu["dogs_pil"],
          "ratio_first_epoch": dogs_first_epoch[0] / cpu["dogs_pil"],
          "pil_wall": wall["dogs_pil"],
          "ours_cached_epochs_wall": wall["dogs_ours_cached"],
          "ratio_wall": wall["dogs_ours_cached"] / wall["dogs_pil"],
      },
      "imagenet_train": {
          "num_images": len(imagenet_images),
          "pil_torchvision_transforms": cpu["imagenet_pil"],
          "ours": cpu["imagenet_ours"],
          "ratio": cpu["imagenet_ours"] / cpu["imagenet_pil"],
          "pil_wall": wall["imagenet_pil"],
          "ours_wall": wall["imagenet_ours"],
          "ratio_wall": wall["imagenet_ours"] / wall["imagenet_pil"],
      },
      "per_round_cpu_and_wall": rounds,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  dogs, imagenet = report["stanford_dogs_train"], report["imagenet_train"]
  print(f"Stanford Dogs train, images/s/core: PIL {dogs['pil_torchvision_transforms']:.0f}, "
        f"ours {dogs['ours_cached_epochs']:.0f} (first epoch "
        f"{dogs['ours_first_epoch_decode_resize_cache']:.0f}) -> ratio {dogs['ratio']:.2f}x "
        f"({dogs['ratio_first_epoch']:.2f}x first epoch)")
  print(f"ImageNet train, images/s/core: PIL {imagenet['pil_torchvision_transforms']:.0f}, "
        f"ours {imagenet['ours']:.0f} -> ratio {imagenet['ratio']:.2f}x")
  print(f"Wrote {args.output}")


if __name__ == "__main__":
  main()
