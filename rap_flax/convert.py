"""Weights between rap_flax, PyTorch (the upstream layout) and ONNX.

  python -m rap_flax.convert to-flax  --input=model_best.pth --output=DIR --config=configs/NAME.py
  python -m rap_flax.convert to-torch --input=WORKDIR --output=model.pth [--checkpoint=best]
  python -m rap_flax.convert to-onnx  --input=WORKDIR --output=model.onnx

--input is anything `rap_flax.load_variables` reads: a training workdir (--checkpoint picks
best, latest or a step), a directory written by to-flax, a .pth/.pt or .safetensors file.
--config (with --config.FIELD=VALUE overrides) describes the model; workdirs and to-flax
directories record theirs, so for them it may be left out. to-torch writes the upstream
Dogs format (.pth, loadable by the upstream code with strict=True) or .safetensors; to-onnx
writes a graph with a dynamic batch dimension (NCHW images in [0, 1] -> logits). Existing
outputs are kept unless --overwrite.
"""

from __future__ import annotations

import os

import jax
from absl import flags

from rap_flax import cli, data, files, models, weights

DIRECTIONS = ("to-flax", "to-torch", "to-onnx")
FLAGS = flags.FLAGS


def define_flags() -> None:
  cli.define_config_flag(required=False)
  flags.DEFINE_string("input", None, "Weights to convert (see above).")
  flags.DEFINE_string("output", None, "to-flax: new directory; to-torch: .pth or .safetensors "
                      "file; to-onnx: .onnx file.")
  flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number (workdirs).')
  flags.DEFINE_bool("overwrite", False, "Replace an existing output file.")
  flags.DEFINE_integer("image_size", None, "to-onnx: the example input size used for tracing "
                       "(default: 224, or 32 with the CIFAR stem); the batch stays dynamic.")


def convert(direction: str, source: str, output: str, config=None, checkpoint: str = "best",
            overwrite: bool = False, image_size: int | None = None) -> str:
  """Converts `source` to `output`; returns a one-line summary."""
  if direction not in DIRECTIONS:
    raise ValueError(f"Unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}.")
  source, output = files.expand(source), files.expand(output)
  if direction != "to-flax" and os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output} exists; pass --overwrite to replace it.")
  model = (None if config is None
           else models.spec_from_config(config, data.num_classes(config.data)))
  opened = weights.open_source(source, model, checkpoint)
  model_spec = opened.model_spec
  variables = weights.exact_variables(opened)
  if direction == "to-flax":
    weights.save_flax_directory(variables, model_spec, output)
  elif direction == "to-torch":
    weights.save_state_dict(variables, model_spec, output, overwrite)
  else:
    from rap_flax.pytorch import onnx_export  # pylint: disable=g-import-not-at-top
    if not output.endswith(".onnx"):
      raise ValueError(f"--output={output}: an ONNX file name ends in .onnx.")
    onnx_export.export(variables, model_spec, output, image_size, overwrite)
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  return (f"Converted {opened.description} -> {output} ({model_spec.arch} + "
          f"{model_spec.attention}, {model_spec.num_classes} classes, {count:,} parameters).")


def main(argv):
  if len(argv) != 2 or argv[1] not in DIRECTIONS:
    raise ValueError(f"Usage: python -m rap_flax.convert {{{'|'.join(DIRECTIONS)}}} "
                     "--input=... --output=... [--config=configs/NAME.py]")
  if not FLAGS.input or not FLAGS.output:
    raise ValueError("Pass --input=WEIGHTS and --output=PATH.")
  config = cli.load_config() if FLAGS["config"].present else None
  print(convert(argv[1], FLAGS.input, FLAGS.output, config, FLAGS.checkpoint, FLAGS.overwrite,
                FLAGS.image_size))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
