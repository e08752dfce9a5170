"""Weights between rap_flax, PyTorch (the upstream layout) and ONNX.

  python -m rap_flax.convert to-flax  --input=model_best.pth --output=DIR --config=configs/NAME.py
  python -m rap_flax.convert to-torch --input=WORKDIR --output=model.pth [--checkpoint=best]
  python -m rap_flax.convert to-onnx  --input=WORKDIR --output=model.onnx
  python -m rap_flax.convert to-onnx  --input=WORKDIR --output=model_int8.onnx --quantize=int8

--input is anything `rap_flax.load_variables` reads: a training workdir (--checkpoint picks
best, latest or a step), a directory written by to-flax, a .pth/.pt or .safetensors file.
--config (with --config.FIELD=VALUE overrides) describes the model; workdirs and to-flax
directories record theirs, so for them it may be left out. to-torch writes the upstream
Dogs format (.pth, loadable by the upstream code with strict=True) or .safetensors; to-onnx
writes a graph with a dynamic batch dimension (NCHW images in [0, 1] -> logits) at the image
size the run was trained at; --quantize=int8 makes it int8 (onnxruntime static quantization),
calibrated on images of the run's own train split. Existing outputs are kept unless
--overwrite.
"""

from __future__ import annotations

import os

from absl import flags

from rap_flax import cli  # first: it starts jax quietly (rap_flax.platforms)
from rap_flax import data, files, models, weights
from rap_flax.training import config_lib

import jax  # noqa: E402  (after cli, see above)

DIRECTIONS = ("to-flax", "to-torch", "to-onnx")
CALIBRATION_BATCHES = 10
FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag(required=False)
  flags.DEFINE_string("input", None, "Weights to convert (see above).")
  flags.DEFINE_string("output", None, "to-flax: new directory; to-torch: .pth or .safetensors "
                      "file; to-onnx: .onnx file.")
  flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number (workdirs).')
  flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
  flags.DEFINE_integer("image_size", None, "to-onnx: the graph's input size (default: the "
                       "run's config.data.image_size, which a workdir records; without a "
                       "config 224, or 32 with the CIFAR stem); the batch stays dynamic.")
  flags.DEFINE_enum("quantize", None, ["int8"], "to-onnx: quantize the graph (static, QDQ, "
                    "calibrated on the run's train split; needs the run's config, which a "
                    "workdir records).")
  flags.DEFINE_integer("calibration_batches", CALIBRATION_BATCHES, "to-onnx --quantize: "
                       "batches of train images to calibrate on.")


def convert(direction: str, source: str, output: str, config=None, checkpoint: str = "best",
            overwrite: bool = False, image_size: int | None = None, quantize: str | None = None,
            calibration_batches: int = CALIBRATION_BATCHES) -> str:
  """Converts `source` to `output`; returns a one-line summary."""
  if direction not in DIRECTIONS:
    raise ValueError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
  if quantize and direction != "to-onnx":
    raise ValueError(f"--quantize applies to to-onnx, not {direction}.")
  source, output = files.expand(source), files.expand(output)
  if direction != "to-flax" and os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output} exists; pass --overwrite to replace it.")
  model = (None if config is None
           else models.spec_from_config(config, data.num_classes(config.data)))
  opened = weights.open_source(source, model, checkpoint)
  model_spec = opened.model_spec
  variables = weights.exact_variables(opened)
  note = ""
  if direction == "to-flax":
    weights.save_flax_directory(variables, model_spec, output)
  elif direction == "to-torch":
    weights.save_state_dict(variables, model_spec, output, overwrite)
  else:
    from rap_flax.pytorch import onnx_export  # pylint: disable=g-import-not-at-top
    if not output.endswith(".onnx"):
      raise ValueError(f"--output={output}: an ONNX file name ends in .onnx.")
    if config is None and weights.is_workdir(source):
      config = config_lib.recorded_config(source)  # the run's data: its image size, its images
    note = onnx_export.export_for_run(variables, model_spec, output, config, image_size,
                                      quantize, calibration_batches, overwrite)
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  return (f"Converted {opened.description} -> {output} ({model_spec.arch} + "
          f"{model_spec.attention}, {model_spec.num_classes} classes, {count:,} parameters"
          f"{note}).")


def main(argv):
  if len(argv) != 2 or argv[1] not in DIRECTIONS:
    raise ValueError(f"Usage: python -m rap_flax.convert {{{'|'.join(DIRECTIONS)}}} "
                     "--input=... --output=... [--config=configs/NAME.py]")
  if not FLAGS.input or not FLAGS.output:
    raise ValueError("Pass --input=WEIGHTS and --output=PATH.")
  config = cli.load_config() if FLAGS["config"].present else None
  print(convert(argv[1], FLAGS.input, FLAGS.output, config, FLAGS.checkpoint, FLAGS.overwrite,
                FLAGS.image_size, FLAGS.quantize, FLAGS.calibration_batches))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
