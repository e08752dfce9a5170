"""Input throughput per CPU core: rap_flax.data (tf.data) vs the upstream transforms (PIL), and
the JPEG decoder's own speed on the same crops.

Sides, each in its own process pinned to one core, in alternating rounds (pil, ours, bound,
then bound, ours, pil, ...); every round is a fresh process:
- pil: what the upstream torchvision pipelines do per image, with PIL (tests/pil_reference.py):
  decode, the train or eval transforms, stack into a batch.
- ours: the real pipelines, data.create_train_iterator / create_eval_iterator, over tfds datasets
  prepared from the same generated JPEGs, handing over uint8 batches (data.model_input scales
  them on the device).
- bound: ImageNet training's decode-only bound: tf.image.decode_and_crop_jpeg of exactly the crop
  windows ours draws in its timed batches (same images, same order), and nothing else.

Ours is timed over the middle of each epoch: every epoch builds its own tf.data pipeline (that is
what makes resuming exact), and the first batches of an epoch also pay for building it and
filling its buffers, the last ones only drain them. That setup is a fixed cost per epoch
(epoch_start_cpu_s): noise next to an ImageNet epoch of 1.28M images, but a good part of an
epoch of the default 1280 generated images. The whole-epoch figures are reported too. Eval is
timed the same way over the validation split (short side 256, centre crop 224).

Dogs: upstream decodes and resizes every image every epoch; ours caches the 256x256 images after
the first epoch, so the steady-state epochs only crop, flip and scale brightness. Both the first
epoch and the cached epochs are reported; the ratio uses the cached ones.

--profile instead splits ImageNet training per image (read and batch, crop window, decode, the
two resize passes, ...) and measures the alternatives that were considered (leads): the variants
of the train transform run over the same epoch in one pinned process, in alternating order.
Refuses to start on a busy machine (see harness.py).

    python benchmarks/input_pipeline.py [--profile] [--output benchmarks/results/input_pipeline.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import harness  # noqa: E402
from rap_flax import data  # noqa: E402
from rap_flax.data import catalog, hosts, prepare  # noqa: E402

# The fake-source writers and the PIL reference live with the tests (not installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests import fake_sources, pil_reference  # noqa: E402

# Typical photo sizes (height, width) of Stanford Dogs / ImageNet images.
SHAPES = [(375, 500), (500, 375), (333, 500), (500, 333), (375, 500), (400, 300), (480, 640),
          (360, 480)]
DOGS_CLASSES = 120
IMAGENET_CLASSES = 8
EDGE_BATCHES = 3  # batches at each end of an epoch left out of its steady-state timing
SIZE = 224


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


def prepare_imagenet(root: str, count: int, eval_count: int) -> tuple[list[bytes], list[bytes]]:
  images = generated_jpegs(count, seed=10_000)
  validation = generated_jpegs(eval_count, seed=20_000)
  wnids = catalog.imagenet_subset_wnids(30)[:IMAGENET_CLASSES]  # any real wnids will do
  train = {wnid: images[c::len(wnids)] for c, wnid in enumerate(wnids)}
  fake_sources.write_ilsvrc_tars(os.path.join(root, "ilsvrc"), train, validation)
  prepare.prepare("imagenet2012", os.path.join(root, "ilsvrc"), os.path.join(root, "tfds"))
  return images, validation


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
  draw = (lambda: (rng.random(num_uniforms),)) if num_uniforms else tuple
  with Timer() as timer:
    for first in range(0, len(order), batch_size):
      np.stack([transform(images[i], *draw()) for i in order[first:first + batch_size]])
  return {"cpu": len(order) / timer.cpu, "wall": len(order) / timer.wall}


def ours_rates(iterator, batch_size: int, num_batches: int) -> dict[str, float]:
  with Timer() as timer:
    for _ in range(num_batches):
      next(iterator)
  return {"cpu": num_batches * batch_size / timer.cpu,
          "wall": num_batches * batch_size / timer.wall}


def timed_batches(steps_per_epoch: int) -> int:
  timed = steps_per_epoch - 2 * EDGE_BATCHES
  if timed < 1:
    raise SystemExit(f"{steps_per_epoch} batches per epoch leave none to time; generate more "
                     "images or use a smaller --batch_size.")
  return timed


def ours_epoch_rates(iterator, batch_size: int, steps_per_epoch: int) -> dict[str, float]:
  """Times one epoch (or eval pass) of an iterator that stands at the start of one.

  cpu / wall: images per second over the middle batches, where as much work is buffered ahead
  when the timing stops as when it starts; epoch_start_cpu_s: the first batch (pipeline
  construction and buffer fill); whole_epoch_cpu: images per CPU-second of the whole epoch.
  """
  timed = timed_batches(steps_per_epoch)
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
  parser.add_argument("--imagenet_eval_images", type=int, default=640)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--profile", action="store_true",
                      help="the per-image split of ImageNet training and the leads instead")
  parser.add_argument("--root", default=None, help=argparse.SUPPRESS)  # set for the workers
  harness.add_common_flags(parser, "input_pipeline.json")
  args = parser.parse_args(argv)
  if args.profile and args.output == parser.get_default("output"):
    args.output = os.path.join(harness.RESULTS_DIR, "input_pipeline_profile.json")
  return args


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


def data_config(args, dataset: str):
  config = data.default_config()
  config.update({"dataset": dataset, "data_dir": os.path.join(args.root, "tfds"), "cache": True,
                 "shuffle_buffer_size": 4096, "prefetch_batches": 2})
  return config


ONE_HOST = dict(process_index=0, process_count=1)


def pil_worker(args) -> dict:
  batch = args.batch_size
  dogs_images = read_images(os.path.join(args.root, "jpegs", "dogs"))
  imagenet_images = read_images(os.path.join(args.root, "jpegs", "imagenet"))
  validation = read_images(os.path.join(args.root, "jpegs", "imagenet_eval"))
  return {
      "dogs": pil_rates(pil_reference.dogs_train, dogs_images, 4, batch,
                        len(dogs_images) // batch // 2),
      "imagenet": pil_rates(pil_reference.imagenet_train, imagenet_images,
                            4 * pil_reference.RRC_ATTEMPTS + 1, batch,
                            len(imagenet_images) // batch),
      "imagenet_eval": pil_rates(pil_reference.imagenet_eval, validation, 0, batch,
                                 len(validation) // batch)}


def ours_worker(args) -> dict:
  batch = args.batch_size
  dogs_epoch = len(os.listdir(os.path.join(args.root, "jpegs", "dogs"))) // batch
  dogs_it = data.create_train_iterator(data_config(args, "stanford_dogs"), batch, **ONE_HOST)
  first_epoch = ours_rates(dogs_it, batch, dogs_epoch)
  imagenet = data_config(args, "imagenet2012")
  imagenet_epoch = len(os.listdir(os.path.join(args.root, "jpegs", "imagenet"))) // batch
  imagenet_it = data.create_train_iterator(imagenet, batch, **ONE_HOST)
  eval_batches = len(os.listdir(os.path.join(args.root, "jpegs", "imagenet_eval"))) // batch
  return {"dogs_first_epoch": first_epoch,
          "dogs_cached": ours_epoch_rates(dogs_it, batch, dogs_epoch),
          "imagenet": ours_epoch_rates(imagenet_it, batch, imagenet_epoch),
          "imagenet_eval": ours_epoch_rates(data.create_eval_iterator(imagenet, batch, **ONE_HOST),
                                            batch, eval_batches)}


def imagenet_epochs(args):
  """The TrainEpochs behind ours' ImageNet iterator (seed 0, one host)."""
  from rap_flax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top

  pipeline = tfds_pipeline.TfdsPipeline(catalog.TFDS_DATASETS["imagenet2012"],
                                        data_config(args, "imagenet2012"))
  return tfds_pipeline.TrainEpochs(pipeline, args.batch_size, 0, hosts.HostShard(0, 1))


def bound_worker(args) -> dict:
  from rap_flax.data import transforms  # pylint: disable=g-import-not-at-top
  from rap_flax.data.tf_import import tf  # pylint: disable=g-import-not-at-top

  epochs = imagenet_epochs(args)
  timed = timed_batches(epochs.steps_per_epoch) * args.batch_size
  # The encoded images and crop windows of the batches ours times in epoch 0, in its order.
  windows = epochs.examples(0, EDGE_BATCHES).take(timed).map(
      lambda position, example: (example[0],
                                 transforms.jpeg_crop_box(example[0],
                                                          epochs.uniforms(0, position))))
  encoded, boxes = zip(*windows.as_numpy_iterator())
  decoded = tf.data.Dataset.from_tensor_slices((list(encoded), np.stack(boxes))).map(
      lambda image, box: tf.shape(tf.image.decode_and_crop_jpeg(
          image, box, channels=3, dct_method="INTEGER_ACCURATE")),
      num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch_size).prefetch(2)
  next(iter(decoded))  # builds the pipeline
  with Timer() as timer:
    for _ in decoded:
      pass
  return {"imagenet_decode": {"cpu": timed / timer.cpu, "wall": timed / timer.wall}}


# --profile ---------------------------------------------------------------------------------

def profile_variants(epochs, tf, transforms):
  """name -> (map function over (position, (encoded, label)), tf.data options or None).

  The stages are cumulative: each does what the one before does plus one step, and hands over
  a uint8 (224, 224, 3) image derived from its last result (so that nothing is pruned), as the
  real train transform does; the leads change one thing in the real transform.
  """
  # pylint: disable=protected-access  (the resize's two passes are timed one by one)
  uniforms = lambda position: epochs.uniforms(0, position)
  mirror = lambda u: u[4 * transforms.RRC_ATTEMPTS] < 0.5
  filled = lambda value: tf.fill([SIZE, SIZE, 3], tf.cast(value, tf.uint8))

  def stage(depth):
    def fn(position, example):
      encoded = example[0]
      if depth == 0:
        return filled(tf.strings.length(encoded))
      u = uniforms(position)
      box = transforms.jpeg_crop_box(encoded, u)
      window, left = transforms.widened_crop(box, tf.image.extract_jpeg_shape(encoded)[1])
      if depth == 1:
        return filled(window[0] + left)
      crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3,
                                           dct_method="INTEGER_ACCURATE")
      if depth == 2:
        return filled(crop[0, 0, 0])
      shape = tf.shape(crop)
      rows = transforms._resample_rows(tf.reshape(crop, [shape[0], shape[1] * 3]),
                                       (0, box[2], SIZE, 0), SIZE)
      if depth == 3:
        return filled(rows[0, 0])
      swapped = tf.transpose(tf.reshape(rows, [SIZE, shape[1], 3]), [1, 0, 2])
      return filled(swapped[0, 0, 0])
    return fn

  def train(dct_method="INTEGER_ACCURATE", resize="pil", normalise=False, exact_windows=False):
    def fn(position, example):
      if exact_windows:  # the constants are read while tf.data traces this function
        with rounding(transforms, span=1, width=1):
          return train(dct_method, resize, normalise)(position, example)
      encoded, u = example[0], uniforms(position)
      box = transforms.jpeg_crop_box(encoded, u)
      shape = tf.image.extract_jpeg_shape(encoded)
      if resize == "bilinear":
        crop = tf.image.decode_and_crop_jpeg(encoded, box, channels=3, dct_method=dct_method)
        image = tf.image.resize(crop, [SIZE, SIZE])
        image = tf.cast(tf.where(mirror(u), tf.reverse(image, [1]), image) + 0.5, tf.uint8)
      elif resize == "dct":
        image = dct_downscaled(encoded, box, shape, mirror(u), tf, transforms)
      else:
        window, left = transforms.widened_crop(box, shape[1])
        crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=dct_method)
        image = transforms.resize_like_pil(crop, (SIZE, SIZE), crop=(0, left, box[2], box[3]),
                                           mirror=mirror(u))
      if normalise:  # as the host did before 0.3: one multiply-add over rows of SIZE * 3
        mean, std = pil_reference.IMAGENET_MEAN, pil_reference.IMAGENET_STD
        scale, offset = np.tile(1 / (255 * std), SIZE), np.tile(-mean / std, SIZE)
        rows = tf.reshape(tf.cast(image, tf.float32), [SIZE, SIZE * 3]) * scale + offset
        image = tf.reshape(rows, [SIZE, SIZE, 3])
      return image
    return fn

  def options(**settings):
    opts = tf.data.Options()
    for path, value in settings.items():
      target = opts
      *parents, leaf = path.split("__")
      for parent in parents:
        target = getattr(target, parent)
      setattr(target, leaf, value)
    return opts

  return {
      "read, shuffle, batch, hand-over": (stage(0), None),
      "+ crop window (shape, draws, box)": (stage(1), None),
      "+ decode_and_crop_jpeg": (stage(2), None),
      "+ vertical resize pass": (stage(3), None),
      "+ transpose": (stage(4), None),
      "ours: + horizontal pass, flip, round to uint8": (train(), None),
      "lead: normalise on the host, float32 batches": (train(normalise=True), None),
      "lead: exact windows (matmul shapes not rounded up)": (train(exact_windows=True), None),
      "lead: dct_method INTEGER_FAST": (train(dct_method="INTEGER_FAST"), None),
      "lead: tf.image.resize bilinear, no antialiasing": (train(resize="bilinear"), None),
      "lead: DCT-domain 1/2 decode when the crop is >= 2x the output": (train(resize="dct"),
                                                                         None),
      "lead: max_intra_op_parallelism 1": (train(), options(threading__max_intra_op_parallelism=1)),
      "lead: autotune off": (train(), options(autotune__enabled=False)),
      "lead: no default static optimisations": (
          train(), options(experimental_optimization__apply_default_optimizations=False)),
  }


@contextlib.contextmanager
def rounding(transforms, span: int, width: int):
  saved = transforms.SPAN_STEP, transforms.WIDTH_STEP
  transforms.SPAN_STEP, transforms.WIDTH_STEP = span, width
  try:
    yield
  finally:
    transforms.SPAN_STEP, transforms.WIDTH_STEP = saved


def dct_downscaled(encoded, box, shape, mirror, tf, transforms):
  """libjpeg's 1/2 DCT-domain scaling where the crop is at least twice the output on both
  sides (the window then halved, rounded inwards), the PIL-faithful resize otherwise."""
  top, left, height, width = tf.unstack(box)
  halve = (height >= 2 * SIZE) & (width >= 2 * SIZE)

  def scaled():
    window = tf.stack([(top + 1) // 2, (left + 1) // 2, height // 2, width // 2])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3, ratio=2,
                                         dct_method="INTEGER_ACCURATE")
    return transforms.resize_like_pil(crop, (SIZE, SIZE), mirror=mirror)

  def full():
    window, offset = transforms.widened_crop(box, shape[1])
    crop = tf.image.decode_and_crop_jpeg(encoded, window, channels=3,
                                         dct_method="INTEGER_ACCURATE")
    return transforms.resize_like_pil(crop, (SIZE, SIZE), crop=(0, offset, height, width),
                                      mirror=mirror)

  return tf.cond(halve, scaled, full)


def profile_worker(args, names=None) -> dict:
  from rap_flax.data import tfds_pipeline, transforms  # pylint: disable=g-import-not-at-top
  from rap_flax.data.tf_import import tf  # pylint: disable=g-import-not-at-top

  epochs = imagenet_epochs(args)
  variants = profile_variants(epochs, tf, transforms)
  names = names or list(variants)
  timed = timed_batches(epochs.steps_per_epoch)

  def dataset(name):
    fn, options = variants[name]
    batches = tfds_pipeline.parallel_map(epochs.examples(0, 0), fn)
    batches = tfds_pipeline.deterministic(batches.batch(args.batch_size, drop_remainder=True)
                                          .prefetch(2))
    return batches.with_options(options) if options is not None else batches

  ms_per_image = {name: [] for name in names}
  for index in range(args.rounds):
    for name in (names if index % 2 == 0 else names[::-1]):
      iterator = dataset(name).as_numpy_iterator()
      for _ in range(EDGE_BATCHES):
        next(iterator)
      with Timer() as timer:
        for _ in range(timed):
          next(iterator)
      ms_per_image[name].append(1e3 * timer.cpu / (timed * args.batch_size))
  report = {"ms_per_image": ms_per_image}
  if len(names) > 1:
    report["pixel_difference"] = resize_differences(dataset, timed)
    report["dct_eligible_fraction"] = dct_eligible_fraction(epochs, tf, transforms, timed, args)
  return report


def resize_differences(dataset, num_batches) -> dict:
  """Max and mean difference, in levels, of each resize lead from ours (the PIL-faithful resize,
  itself within one level of PIL) over the timed batches."""
  def images(name):
    iterator = dataset(name).as_numpy_iterator()
    return np.concatenate([next(iterator)[0].astype(np.float64)
                           for _ in range(EDGE_BATCHES + num_batches)])
  ours = images("ours: + horizontal pass, flip, round to uint8")
  differences = {}
  for lead in ("lead: tf.image.resize bilinear, no antialiasing",
               "lead: DCT-domain 1/2 decode when the crop is >= 2x the output"):
    diff = np.abs(images(lead) - ours)
    differences[lead] = {"max": float(diff.max()), "mean": float(diff.mean())}
  return differences


def dct_eligible_fraction(epochs, tf, transforms, num_batches, args) -> float:
  boxes = epochs.examples(0, 0).take((EDGE_BATCHES + num_batches) * args.batch_size).map(
      lambda position, example: transforms.jpeg_crop_box(example[0], epochs.uniforms(0, position)))
  boxes = np.stack(list(boxes.as_numpy_iterator()))
  return float(np.mean((boxes[:, 2] >= 2 * SIZE) & (boxes[:, 3] >= 2 * SIZE)))


# -------------------------------------------------------------------------------------------

def median_of(rounds: list[dict], part: str, key: str = "cpu") -> dict:
  return harness.summary([r[part][key] for r in rounds])


@contextlib.contextmanager
def environment(**variables):
  saved = {name: os.environ.get(name) for name in variables}
  os.environ.update(variables)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        del os.environ[name]
      else:
        os.environ[name] = value


def profile_report(args, forwarded, root) -> dict:
  profile = harness.run_worker(__file__, "profile", [*forwarded, f"--root={root}"])
  # TF_ENABLE_ONEDNN_OPTS is read when tensorflow loads: a process of its own.
  with environment(TF_ENABLE_ONEDNN_OPTS="0"):
    eigen = harness.run_worker(__file__, "profile_eigen", [*forwarded, f"--root={root}"])
  times = {name: harness.summary(values) for name, values in profile["ms_per_image"].items()}
  times["lead: Eigen matmuls and transposes (TF_ENABLE_ONEDNN_OPTS=0)"] = harness.summary(
      eigen["ms_per_image"]["ours: + horizontal pass, flip, round to uint8"])
  names = list(times)
  stages = [name for name in names if not name.startswith("lead")]
  split = {name: times[name]["median"] - (times[stages[i - 1]]["median"] if i else 0.0)
           for i, name in enumerate(stages)}
  print("ImageNet train per image, CPU ms on one core (median over rounds) [min-max]:")
  for name in stages:
    print(f"  {name:62s} {times[name]['median']:6.3f} [{times[name]['min']:.3f}-"
          f"{times[name]['max']:.3f}]  step {split[name]:+.3f}")
  ours = times[stages[-1]]["median"]
  for name in names[len(stages):]:
    difference = profile["pixel_difference"].get(name)
    levels = (f"; vs ours max {difference['max']:.0f}, mean {difference['mean']:.2f} levels"
              if difference else "")
    print(f"  {name:62s} {times[name]['median']:6.3f} ({times[name]['median'] / ours - 1:+.0%}"
          f"){levels}")
  print(f"  crops eligible for the 1/2 DCT decode: {profile['dct_eligible_fraction']:.1%}")
  return {"benchmark": "input_pipeline_profile",
          "unit": "CPU milliseconds per image, one core; median, min and max over rounds",
          "ms_per_image": times, "stage_increments_ms": split,
          "pixel_difference_levels": profile["pixel_difference"],
          "dct_eligible_fraction": profile["dct_eligible_fraction"]}


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    harness.pin_threads(1)
    workers = {"pil": pil_worker, "ours": ours_worker, "bound": bound_worker,
               "profile": profile_worker,
               "profile_eigen": lambda a: profile_worker(
                   a, ["ours: + horizontal pass, flip, round to uint8"])}
    harness.worker_result(workers[args.worker](args))
    return
  harness.check_idle(args.allow_loaded)
  load_before = harness.load_average()
  forwarded = harness.forwarded_argv(argv, "--root")
  with tempfile.TemporaryDirectory() as root:
    train_images, validation = prepare_imagenet(root, args.imagenet_images,
                                                args.imagenet_eval_images)
    write_images(os.path.join(root, "jpegs", "imagenet"), train_images)
    write_images(os.path.join(root, "jpegs", "imagenet_eval"), validation)
    if args.profile:
      report = profile_report(args, forwarded, root)
    else:
      write_images(os.path.join(root, "jpegs", "dogs"), prepare_dogs(root, args.dogs_per_class))
      rounds = harness.alternate(
          ("pil", "ours", "bound"), args.rounds,
          lambda side: harness.run_worker(__file__, side, [*forwarded, f"--root={root}"]))
      report = throughput_report(args, rounds)
  report.update({"machine": harness.machine(1), "load_before": load_before,
                 "load_after": harness.load_average(), "batch_size": args.batch_size,
                 "rounds": args.rounds, "image_shapes": SHAPES})
  harness.write_report(args.output, report)
  if not args.profile:
    print(readme_row(report))


def readme_row(report: dict) -> str:
  """The README's benchmark table row for this report."""
  # The load before the run: the one-core sides themselves bring the load after to about 1.
  load = report["load_before"]["1min"]
  cores = report["machine"]["cpu_count"]
  loaded = (f" (**loaded machine**: 1-minute load {load:.1f} on {cores} cores)"
            if load > harness.LOAD_PER_CORE_LIMIT * cores else "")
  dogs, train, evaluation = (report["stanford_dogs_train"], report["imagenet_train"],
                             report["imagenet_eval"])
  rate = lambda summary: f"{summary['median']:,.0f}"
  ratio = lambda r: f"**{r['median']:.2f}x** [{r['min']:.2f}-{r['max']:.2f}]"
  fraction = train["fraction_of_bound"]
  return (
      "| `python benchmarks/input_pipeline.py` | input images/s per core on generated JPEGs vs "
      "a PIL implementation of the upstream transforms, and ImageNet training vs the JPEG "
      f"decoder alone on the same crops{loaded} | Stanford Dogs train (cached epochs): "
      f"{rate(dogs['ours_cached_epochs'])} vs {rate(dogs['pil_torchvision_transforms'])}: "
      f"{ratio(dogs['ratio'])} ({dogs['ratio_first_epoch']['median']:.2f}x first epoch); "
      f"ImageNet train: {rate(train['ours'])} vs {rate(train['pil_torchvision_transforms'])}: "
      f"{ratio(train['ratio'])}, decode-only bound {rate(train['decode_only_bound'])}: ours at "
      f"{fraction['median']:.0%} [{fraction['min']:.0%}-{fraction['max']:.0%}]; ImageNet eval: "
      f"{rate(evaluation['ours'])} vs {rate(evaluation['pil_torchvision_transforms'])}: "
      f"{ratio(evaluation['ratio'])} |")


def throughput_report(args, rounds) -> dict:
  pil, ours, bound = rounds["pil"], rounds["ours"], rounds["bound"]
  dogs_pil, dogs_ours = median_of(pil, "dogs"), median_of(ours, "dogs_cached")
  dogs_first = median_of(ours, "dogs_first_epoch")
  imagenet_pil, imagenet_ours = median_of(pil, "imagenet"), median_of(ours, "imagenet")
  decode = median_of(bound, "imagenet_decode")
  whole_epoch = median_of(ours, "imagenet", "whole_epoch_cpu")
  eval_pil, eval_ours = median_of(pil, "imagenet_eval"), median_of(ours, "imagenet_eval")
  report = {
      "benchmark": "input_pipeline",
      "unit": "images per CPU-second of a process pinned to one core (= images/s per core); "
              "median, min and max over rounds",
      "method": f"ours: middle of each epoch (eval: of the pass), {EDGE_BATCHES} batches at "
                "each end left out; epoch_start_cpu_s: CPU seconds of an epoch's first batch "
                "(building its pipeline, filling buffers); *_whole_epoch: the whole epoch, "
                "setup included; decode_only_bound: decode_and_crop_jpeg of the crop windows "
                "of ours' timed batches, nothing else",
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
          "decode_only_bound": decode,
          "fraction_of_bound": harness.ratio(imagenet_ours, decode),
          "epoch_start_cpu_s": median_of(ours, "imagenet", "epoch_start_cpu_s"),
          "ours_whole_epoch": whole_epoch,
          "ratio_whole_epoch": harness.ratio(whole_epoch, imagenet_pil),
      },
      "imagenet_eval": {
          "pil_torchvision_transforms": eval_pil, "ours": eval_ours,
          "ratio": harness.ratio(eval_ours, eval_pil),
      },
      "per_round": rounds,
  }
  dogs, imagenet = report["stanford_dogs_train"], report["imagenet_train"]
  span = lambda r: f"{r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
  print(f"Stanford Dogs train, images/s/core: PIL {dogs_pil['median']:.0f}, ours "
        f"{dogs_ours['median']:.0f} (first epoch {dogs_first['median']:.0f}) -> ratio "
        f"{span(dogs['ratio'])} ({dogs['ratio_first_epoch']['median']:.2f}x first epoch)")
  fraction = imagenet["fraction_of_bound"]
  print(f"ImageNet train, images/s/core: PIL {imagenet_pil['median']:.0f}, ours "
        f"{imagenet_ours['median']:.0f} -> ratio {span(imagenet['ratio'])} "
        f"({imagenet['ratio_whole_epoch']['median']:.2f}x over whole epochs with their setup); "
        f"decode-only bound {decode['median']:.0f}: ours at {fraction['median']:.0%} "
        f"[{fraction['min']:.0%}-{fraction['max']:.0%}]")
  print(f"ImageNet eval, images/s/core: PIL {eval_pil['median']:.0f}, ours "
        f"{eval_ours['median']:.0f} -> ratio {span(report['imagenet_eval']['ratio'])}")
  return report


if __name__ == "__main__":
  main()
