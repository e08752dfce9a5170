"""Training-input throughput per CPU core: rap_flax.data (tf.data) vs the upstream transforms.

The baseline does what the upstream torchvision pipelines do per image, with PIL: decode, the
train transforms (pil_reference.dogs_train / imagenet_train), stack into a batch. Ours is the real
pipeline, data.create_train_iterator, over tfds datasets prepared from the same generated JPEGs.
The whole process is pinned to one core, so both figures are images/s per core.

Ours is timed over the middle of each epoch: every epoch builds its own tf.data pipeline (that is
what makes resuming exact), and the first batches of an epoch also pay for building it and
filling its buffers, the last ones only drain them. That setup is a fixed cost per epoch (a
fraction of a second, reported as epoch_start_cpu_s): noise next to an ImageNet epoch of 1.28M
images, but about a fifth of an epoch of the default 1280 generated images. The whole-epoch
figures, setup included, are reported too.

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
              num_batches: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  order = rng.permutation(num_batches * batch_size) % len(images)
  with Timer() as timer:
    for first in range(0, len(order), batch_size):
      np.stack([transform(images[i], rng.random(num_uniforms))
                for i in order[first:first + batch_size]])
  return {"cpu": len(order) / timer.cpu, "wall": len(order) / timer.wall}


def ours_rates(iterator, batch_size: int, num_batches: int) -> dict[str, float]:
  with Timer() as timer:
    for _ in range(num_batches):
      next(iterator)
  return {"cpu": num_batches * batch_size / timer.cpu,
          "wall": num_batches * batch_size / timer.wall}


EDGE_BATCHES = 3  # batches at each end of an epoch left out of its steady-state timing


def ours_epoch_rates(iterator, batch_size: int, steps_per_epoch: int) -> dict[str, float]:
  """Times one epoch of an iterator that stands at the start of one.

  cpu / wall: images per second over the middle batches, where as much work is buffered ahead
  when the timing stops as when it starts; epoch_start_cpu_s: the first batch (pipeline
  construction and buffer fill); whole_epoch_cpu: images per CPU-second of the whole epoch.
  """
  timed = steps_per_epoch - 2 * EDGE_BATCHES
  if timed < 1:
    raise ValueError(f"{steps_per_epoch} batches per epoch leave none to time; generate more "
                     "images or use a smaller --batch_size.")
  with Timer() as whole:
    with Timer() as start:
      next(iterator)
    for _ in range(EDGE_BATCHES - 1):
      next(iterator)
    with Timer() as middle:
      for _ in range(timed):
        next(iterator)
    for _ in range(EDGE_BATCHES):
      next(iterator)
  return {"cpu": timed * batch_size / middle.cpu, "wall": timed * batch_size / middle.wall,
          "epoch_start_cpu_s": start.cpu,
          "whole_epoch_cpu": steps_per_epoch * batch_size / whole.cpu}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dogs_per_class", type=int, default=16,
                      help="generated training images per breed (x120)")
  parser.add_argument("--imagenet_images", type=int, default=1280)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=5,
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

    rounds = {"dogs_pil": [], "dogs_ours_cached": [], "imagenet_pil": [], "imagenet_ours": []}
    for _ in range(args.rounds):  # alternate, so machine noise hits both sides alike
      rounds["dogs_pil"].append(pil_rates(pil_reference.dogs_train, dogs_images, 4, batch,
                                          dogs_epoch // 2))
      rounds["dogs_ours_cached"].append(ours_epoch_rates(dogs_it, batch, dogs_epoch))
      rounds["imagenet_pil"].append(pil_rates(
          pil_reference.imagenet_train, imagenet_images, 4 * pil_reference.RRC_ATTEMPTS + 1,
          batch, imagenet_epoch))
      rounds["imagenet_ours"].append(ours_epoch_rates(imagenet_it, batch, imagenet_epoch))

  median = {name: {key: statistics.median(r[key] for r in values) for key in values[0]}
            for name, values in rounds.items()}
  dogs_pil, dogs_ours = median["dogs_pil"], median["dogs_ours_cached"]
  imagenet_pil, imagenet_ours = median["imagenet_pil"], median["imagenet_ours"]
  report = {
      "benchmark": "input_pipeline",
      "unit": "images per CPU-second of the process, pinned to one core (= images/s per core); "
              "median over rounds. *_wall: images per wall-clock second, same runs",
      "method": f"ours: middle of each epoch, {EDGE_BATCHES} batches at each end left out; "
                "epoch_start_cpu_s: CPU seconds of an epoch's first batch (building its "
                "pipeline, filling buffers); *_whole_epoch: the whole epoch, setup included",
      "cpu": platform.processor() or platform.machine(),
      "cpu_count_visible": os.cpu_count(),
      "batch_size": batch,
      "rounds": args.rounds,
      "image_shapes": SHAPES,
      "stanford_dogs_train": {
          "num_images": len(dogs_images),
          "pil_torchvision_transforms": dogs_pil["cpu"],
          "ours_cached_epochs": dogs_ours["cpu"],
          "ours_first_epoch_decode_resize_cache": dogs_first_epoch["cpu"],
          "ratio": dogs_ours["cpu"] / dogs_pil["cpu"],
          "ratio_first_epoch": dogs_first_epoch["cpu"] / dogs_pil["cpu"],
          "epoch_start_cpu_s": dogs_ours["epoch_start_cpu_s"],
          "ours_cached_whole_epoch": dogs_ours["whole_epoch_cpu"],
          "ratio_whole_epoch": dogs_ours["whole_epoch_cpu"] / dogs_pil["cpu"],
          "pil_wall": dogs_pil["wall"],
          "ours_cached_epochs_wall": dogs_ours["wall"],
          "ratio_wall": dogs_ours["wall"] / dogs_pil["wall"],
      },
      "imagenet_train": {
          "num_images": len(imagenet_images),
          "pil_torchvision_transforms": imagenet_pil["cpu"],
          "ours": imagenet_ours["cpu"],
          "ratio": imagenet_ours["cpu"] / imagenet_pil["cpu"],
          "epoch_start_cpu_s": imagenet_ours["epoch_start_cpu_s"],
          "ours_whole_epoch": imagenet_ours["whole_epoch_cpu"],
          "ratio_whole_epoch": imagenet_ours["whole_epoch_cpu"] / imagenet_pil["cpu"],
          "pil_wall": imagenet_pil["wall"],
          "ours_wall": imagenet_ours["wall"],
          "ratio_wall": imagenet_ours["wall"] / imagenet_pil["wall"],
      },
      "per_round": rounds,
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
        f"ours {imagenet['ours']:.0f} -> ratio {imagenet['ratio']:.2f}x "
        f"({imagenet['ratio_whole_epoch']:.2f}x over whole {imagenet['num_images']}-image epochs "
        f"with their {imagenet['epoch_start_cpu_s']:.2f} s setup)")
  print(f"Wrote {args.output}")


if __name__ == "__main__":
  main()
