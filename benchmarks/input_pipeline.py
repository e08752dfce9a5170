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

The baseline and ours run in separate processes, each pinned to one core, in alternating
rounds (pil, ours, ours, pil, ...); every round is a fresh process. Refuses to start on a busy
machine (see harness.py).

    python benchmarks/input_pipeline.py [--output benchmarks/results/input_pipeline.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import harness  # noqa: E402
from rap_flax import data  # noqa: E402
from rap_flax.data import catalog, prepare  # noqa: E402

# The fake-source writers and the PIL reference live with the tests (not installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import fake_sources, pil_reference  # noqa: E402

# Typical photo sizes (height, width) of Stanford Dogs / ImageNet images.
SHAPES = [(375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 300), (480, 640),
          (360, 480)]
DOGS_CLASSES = 120
IMAGENET_CLASSES = 8


def generated_jpegs(count: int, seed: int) -> list[bytes]:
  return [fake_sources.photo_like_jpeg(*SHAPES[i % len(SHAPES)], seed=seed + i)
          for i in range(count)]


def prepare_dogs(root: str, per_class: int) -> list[bytes]:
  images = generated_jpegs(DOGS_CLASSES * per_class, seed=0)
  synsets = [f"n02{85620 + c:06d}-Breed_{c}" for c in range(DOGS_CLASSES)]
  paths = [f"{synsets[i % DOGS_CLASSES]}/{synsets[i % DOGS_CLASSES][:9]}_{i}.jpg"
           for i in range(len(images))]
  fake_sources.write_stanford_dogs_source(
      os.path.join(root, "dogs"), dict(zip(paths, images)),
      {"train": paths, "test": paths[:DOGS_CLASSES]}, layout="upstream")
  prepare.prepare("stanford_dogs", os.path.join(root, "dogs"), os.path.join(root, "tfds"))
  return images


def prepare_imagenet(root: str, count: int) -> list[bytes]:
  images = generated_jpegs(count, seed=10_000)
  wnids = catalog.imagenet_subset_wnids(30)[:IMAGENET_CLASSES]  # any real wnids will do
  train = {wnid: images[c::len(wnids)] for c, wnid in enumerate(wnids)}
  fake_sources.write_ilsvrc_tars(os.path.join(root, "ilsvrc"), train, images[:4])
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


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dogs_per_class", type=int, default=16,
                      help="generated training images per breed (x120)")
  parser.add_argument("--imagenet_images", type=int, default=1280)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--root", default=None, help=argparse.SUPPRESS)  # set for the workers
  harness.add_common_flags(parser, "input_pipeline.json")
  return parser.parse_args(argv)


def write_images(directory: str, images: list[bytes]) -> None:
  os.makedirs(directory)
  for index, image in enumerate(images):
    with open(os.path.join(directory, f"{index:05d}.jpg"), "wb") as f:
      f.write(image)


def read_images(directory: str) -> list[bytes]:
  images = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      images.append(f.read())
  return images


def pil_worker(args) -> dict:
  batch = args.batch_size
  dogs_images = read_images(os.path.join(args.root, "jpegs", "dogs"))
  imagenet_images = read_images(os.path.join(args.root, "jpegs", "imagenet"))
  return {
      "dogs": pil_rates(pil_reference.dogs_train, dogs_images, 4, batch,
                        len(dogs_images) // batch // 2),
      "imagenet": pil_rates(pil_reference.imagenet_train, imagenet_images,
                            4 * pil_reference.RRC_ATTEMPTS + 1, batch,
                            len(imagenet_images) // batch)}


def ours_worker(args) -> dict:
  batch = args.batch_size
  tfds_dir = os.path.join(args.root, "tfds")
  def config(dataset):
    data_config = data.default_config()
    data_config.update({"dataset": dataset, "data_dir": tfds_dir, "cache": True,
                        "shuffle_buffer_size": 4096, "prefetch_batches": 2})
    return data_config

  one_host = dict(process_index=0, process_count=1)
  dogs_epoch = len(os.listdir(os.path.join(args.root, "jpegs", "dogs"))) // batch
  dogs_it = data.create_train_iterator(config("stanford_dogs"), batch, **one_host)
  first_epoch = ours_rates(dogs_it, batch, dogs_epoch)
  imagenet_epoch = len(os.listdir(os.path.join(args.root, "jpegs", "imagenet"))) // batch
  imagenet_it = data.create_train_iterator(config("imagenet2012"), batch, **one_host)
  return {"dogs_first_epoch": first_epoch,
          "dogs_cached": ours_epoch_rates(dogs_it, batch, dogs_epoch),
          "imagenet": ours_epoch_rates(imagenet_it, batch, imagenet_epoch)}


def median_of(rounds: list[dict], part: str, key: str = "cpu") -> dict:
  return harness.summary([r[part][key] for r in rounds])


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    harness.pin_threads(1)
    harness.worker_result(pil_worker(args) if args.worker == "pil" else ours_worker(args))
    return
  harness.check_idle(args.allow_loaded)
  load_before = harness.load_average()
  forwarded = [a for a in (argv if argv is not None else sys.argv[1:])
               if not a.startswith(("--worker", "--root"))]
  with tempfile.TemporaryDirectory() as root:
    write_images(os.path.join(root, "jpegs", "dogs"), prepare_dogs(root, args.dogs_per_class))
    write_images(os.path.join(root, "jpegs", "imagenet"),
                 prepare_imagenet(root, args.imagenet_images))
    rounds = harness.alternate(
        ("pil", "ours"), args.rounds,
        lambda side: harness.run_worker(__file__, side, [*forwarded, f"--root={root}"]))
  pil, ours = rounds["pil"], rounds["ours"]
  dogs_pil, dogs_ours = median_of(pil, "dogs"), median_of(ours, "dogs_cached")
  dogs_first = median_of(ours, "dogs_first_epoch")
  imagenet_pil, imagenet_ours = median_of(pil, "imagenet"), median_of(ours, "imagenet")
  report = {
      "benchmark": "input_pipeline",
      "unit": "images per CPU-second of a process pinned to one core (= images/s per core); "
              "median, min and max over rounds",
      "method": f"ours: middle of each epoch, {EDGE_BATCHES} batches at each end left out; "
                "epoch_start_cpu_s: CPU seconds of an epoch's first batch (building its "
                "pipeline, filling buffers); *_whole_epoch: the whole epoch, setup included",
      "machine": harness.machine(1), "load_before": load_before,
      "load_after": harness.load_average(), "batch_size": args.batch_size,
      "rounds": args.rounds, "image_shapes": SHAPES,
      "stanford_dogs_train": {
          "pil_torchvision_transforms": dogs_pil, "ours_cached_epochs": dogs_ours,
          "ours_first_epoch_decode_resize_cache": dogs_first,
          "ratio": harness.ratio(dogs_ours, dogs_pil),
          "ratio_first_epoch": harness.ratio(dogs_first, dogs_pil),
          "epoch_start_cpu_s": median_of(ours, "dogs_cached", "epoch_start_cpu_s"),
          "ours_cached_whole_epoch": median_of(ours, "dogs_cached", "whole_epoch_cpu"),
      },
      "imagenet_train": {
          "pil_torchvision_transforms": imagenet_pil, "ours": imagenet_ours,
          "ratio": harness.ratio(imagenet_ours, imagenet_pil),
          "epoch_start_cpu_s": median_of(ours, "imagenet", "epoch_start_cpu_s"),
          "ours_whole_epoch": median_of(ours, "imagenet", "whole_epoch_cpu"),
          "ratio_whole_epoch": harness.ratio(median_of(ours, "imagenet", "whole_epoch_cpu"),
                                             imagenet_pil),
      },
      "per_round": rounds,
  }
  dogs, imagenet = report["stanford_dogs_train"], report["imagenet_train"]
  print(f"Stanford Dogs train, images/s/core: PIL {dogs_pil['median']:.0f}, ours "
        f"{dogs_ours['median']:.0f} (first epoch {dogs_first['median']:.0f}) -> ratio "
        f"{dogs['ratio']['median']:.2f}x [{dogs['ratio']['min']:.2f}-{dogs['ratio']['max']:.2f}]"
        f" ({dogs['ratio_first_epoch']['median']:.2f}x first epoch)")
  print(f"ImageNet train, images/s/core: PIL {imagenet_pil['median']:.0f}, ours "
        f"{imagenet_ours['median']:.0f} -> ratio {imagenet['ratio']['median']:.2f}x "
        f"[{imagenet['ratio']['min']:.2f}-{imagenet['ratio']['max']:.2f}] "
        f"({imagenet['ratio_whole_epoch']['median']:.2f}x over whole epochs with their setup)")
  harness.write_report(args.output, report)


if __name__ == "__main__":
  main()
