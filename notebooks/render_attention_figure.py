"""Renders notebooks/attention_maps.png: validation digits with SRAP's per-pixel weights on top.

    python notebooks/render_attention_figure.py --workdir=/tmp/digits

If --workdir holds checkpoints (e.g. from `python train.py --config=configs/digits_srap.py
--workdir=/tmp/digits`), the best one is drawn as it is; otherwise the digits demo is trained
there first (a few CPU minutes; `--config.num_train_steps=200` makes it shorter). Without
--workdir it trains in a temporary directory. The notebook draws its figure with the same
functions.
"""

import os
import pathlib
import tempfile

import matplotlib
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from rap_flax import cli, data, files, models, weights
from rap_flax.training import train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", str(REPO / "configs" / "digits_srap.py"),
                                "Training config of the model to draw.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints to draw, or where to train (default: a "
                    "temporary directory).")
flags.DEFINE_string("output", str(REPO / "notebooks" / "attention_maps.png"), "PNG to write.")
flags.DEFINE_integer("num_images", 6, "Validation images, one per class from class 0 up.")
flags.DEFINE_integer("dpi", 80, "Resolution of the PNG.")


def one_per_class(config, count: int) -> tuple[np.ndarray, np.ndarray]:
  """The first validation image of each of the classes 0..count-1, as the model takes it:
  (images, labels)."""
  info = data.get_dataset_info(config.data)
  if not 1 <= count <= info.num_classes:
    raise ValueError(f"count={count}: choose between 1 and {info.num_classes} (the number of "
                     f"classes of {info.name!r}).")
  chosen: dict[int, np.ndarray] = {}
  for batch in data.create_eval_iterator(config.data, batch_size=256):
    for image, label, valid in zip(batch["image"], batch["label"], batch["mask"]):
      if valid and label < count:
        chosen.setdefault(int(label), image)
    if len(chosen) == count:
      break
  absent = sorted(set(range(count)) - set(chosen))
  if absent:
    raise ValueError(f"The validation split of {info.name!r} has no image of class(es) "
                     f"{absent}; ask for fewer than {absent[0] + 1} images.")
  images = data.model_input(config.data)(np.stack([chosen[label] for label in range(count)]))
  return images, np.arange(count)


def last_unit_of_each_stage(maps: dict[str, dict[str, np.ndarray]]) -> list[str]:
  """One block per stage (its deepest gate), in network order, plus final_attention if any."""
  last: dict[str, str] = {}
  for block in maps:
    last[block.split(".")[0]] = block
  return list(last.values())


def attention_figure(images: np.ndarray, labels, maps: dict[str, dict[str, np.ndarray]],
                     blocks: list[str], kind: str = "pixel_weight", title: str | None = None):
  """Rows: images; columns: the input, then `kind` of each block drawn over the input.

  Every column shares one colour scale (its colour bar), so rows can be compared; a map
  coarser than the image is stretched over the whole image.
  """
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  missing = [b for b in blocks if kind not in maps.get(b, {})]
  if missing:
    raise ValueError(f"No {kind!r} for block(s) {missing}; blocks with it: "
                     f"{[b for b in maps if kind in maps[b]]}.")
  rows, cols = len(images), len(blocks) + 1
  figure, axes = plt.subplots(rows, cols, figsize=(1.6 * cols + 0.6, 1.6 * rows + 0.4),
                              squeeze=False, layout="constrained")
  height, width = images.shape[1:3]
  extent = (-0.5, width - 0.5, height - 0.5, -0.5)
  for row, (image, label) in enumerate(zip(images, labels)):
    axes[row, 0].imshow(image.mean(axis=-1), cmap="gray", vmin=0, vmax=1)
    axes[row, 0].set_ylabel(f"label {label}")
  for col, block in enumerate(blocks, start=1):
    values = maps[block][kind][:rows]
    low, high = float(values.min()), float(values.max())
    for row, image in enumerate(images):
      axes[row, col].imshow(image.mean(axis=-1), cmap="gray", vmin=0, vmax=1)
      drawn = axes[row, col].imshow(values[row], cmap="inferno", alpha=0.6, vmin=low,
                                    vmax=high, extent=extent, interpolation="nearest")
    size = "x".join(map(str, values.shape[1:]))
    axes[0, col].set_title(f"{block}\n{size}", fontsize=9)
    figure.colorbar(drawn, ax=axes[:, col], location="bottom", shrink=0.9, aspect=12)
  axes[0, 0].set_title("input", fontsize=9)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  figure.suptitle(title or f"{kind} of the attention gates", fontsize=10)
  return figure


def render(config, workdir: str, output: str, num_images: int, dpi: int) -> None:
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    logging.info("No checkpoints in %s: training %s first.", workdir, config.model.arch)
    train_lib.train_and_evaluate(config, workdir)
  model = models.from_config(config, data.num_classes(config.data))
  variables = weights.load_variables(workdir, model, checkpoint="best")
  images, labels = one_per_class(config, num_images)
  maps = models.attention_maps(model, variables, images)
  title = (f"{config.model.attention.upper()} per-pixel weights of {config.model.arch} "
           f"(width {config.model.width_multiplier}) on validation {config.data.dataset}")
  figure = attention_figure(images, labels, maps, last_unit_of_each_stage(maps), title=title)
  with files.atomic_output(output) as tmp:
    figure.savefig(tmp, dpi=dpi, format="png")
  logging.info("Wrote %s (%d bytes).", output, os.path.getsize(output))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  matplotlib.use("Agg")
  cli.quiet_library_logs()
  if FLAGS.workdir:
    render(FLAGS.config, FLAGS.workdir, FLAGS.output, FLAGS.num_images, FLAGS.dpi)
    return
  with tempfile.TemporaryDirectory() as workdir:
    render(FLAGS.config, workdir, FLAGS.output, FLAGS.num_images, FLAGS.dpi)


if __name__ == "__main__":
  app.run(main)
