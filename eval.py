"""Evaluates a checkpoint on the whole eval split and writes loss/top-1/top-5 as JSON.

  python eval.py --config=configs/digits_srap.py --workdir=/tmp/digits [--checkpoint=latest]
  python eval.py --config=configs/dogs_srap.py --torch_checkpoint=model.pth

--checkpoint is "best" (default; highest validation top-1), "latest", or a step number.
"""

from absl import app, flags
from ml_collections import config_flags

from rap_flax.training import evaluate, metrics, parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir holding orbax checkpoints.")
flags.DEFINE_string("checkpoint", "best", '"best", "latest" or a step number.')
flags.DEFINE_string("torch_checkpoint", None,
                    "Upstream PyTorch checkpoint (.pth/.pt/.safetensors) to evaluate instead.")
flags.DEFINE_string("output", None, "JSON output path (default: <workdir>/eval_<checkpoint>.json).")
parallel.define_distributed_flags()
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_library_logs()
  parallel.initialize_distributed_from_flags()
  result = evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint,
                                        FLAGS.torch_checkpoint, FLAGS.output)
  print(f"top1={100 * result['top1']:.2f}% top5={100 * result['top5']:.2f}% "
        f"loss={result['loss']:.4f} examples={result['num_examples']}")


if __name__ == "__main__":
  app.run(main)
