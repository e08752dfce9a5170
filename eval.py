"""Evaluates weights on the whole eval split and writes loss/top-1/top-5 as JSON.

  python eval.py --config=configs/digits_srap.py --workdir=/tmp/digits [--checkpoint=latest]
  python eval.py --config=configs/dogs_srap.py --weights=model_best.pth
  python eval.py --config=configs/digits_srap.py --weights=model_int8.onnx

--weights is anything rap_flax.load_variables reads (a training workdir, a converter
directory, a .pth or .safetensors file; default: --workdir), or an .onnx graph written by
`python -m rap_flax.convert to-onnx` (float32 or int8), which onnxruntime runs on the CPU.
--checkpoint picks the step of a workdir: "best" (default; highest validation top-1),
"latest", or a step number; an unreadable best/latest step is skipped for the newest
readable one.
"""

import os
import sys

from absl import flags

from rap_flax import cli, weights
from rap_flax.training import evaluate, parallel

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_string("workdir", None, "Training workdir (its checkpoints are evaluated, and the "
                    "JSON goes there).")
flags.DEFINE_string("weights", None, "Weights to evaluate instead of --workdir's checkpoints: "
                    "a workdir, a converter directory, a .pth or .safetensors file, or an .onnx "
                    "graph (run by onnxruntime).")
flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number (workdirs).')
flags.DEFINE_string("output", None, "JSON output path (default: eval_<checkpoint>.json in the "
                    "workdir, or eval_<name>.json beside other weights).")
parallel.define_distributed_flags()


def _default_output(source: str) -> str:
  """In the workdir for its checkpoints; beside any other weights (never inside a converter
  directory, which holds exactly one model's files)."""
  if weights.is_workdir(source):
    return os.path.join(source, f"eval_{FLAGS.checkpoint}.json")
  step_directory = weights.workdir.step_directory(source)
  if step_directory:
    return os.path.join(step_directory[0], f"eval_{step_directory[1]}.json")
  source = os.path.abspath(source).rstrip(os.sep)
  return os.path.join(os.path.dirname(source), f"eval_{os.path.basename(source)}.json")


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}; flags take the form --name=value.")
  source = FLAGS.weights or FLAGS.workdir
  if not source:
    raise ValueError("Pass --workdir=WORKDIR (its checkpoints) or --weights=PATH.")
  config = cli.load_config()
  parallel.initialize_distributed_from_flags()
  if source.endswith(".onnx"):
    result = evaluate.evaluate_onnx(config, source)
  else:
    result = evaluate.evaluate_checkpoint(config, source, FLAGS.checkpoint)
  step = f" (step {result['step']})" if result["step"] is not None else ""
  print(f"top1={100 * result['top1']:.2f}% top5={100 * result['top5']:.2f}% "
        f"loss={result['loss']:.4f} examples={result['num_examples']}{step}", flush=True)
  output = FLAGS.output or _default_output(source)
  try:
    evaluate.write_json(output, result)
  except OSError as error:
    print(f"error: could not write {output} ({error.strerror or error}); the numbers above are "
          "the result. Pass --output=PATH to write them elsewhere.", file=sys.stderr)
    sys.exit(cli.EXIT_USAGE)
  print(f"Wrote {output}", flush=True)


if __name__ == "__main__":
  cli.run(main)
