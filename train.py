"""Trains a model: `python train.py --config=configs/digits_srap.py --workdir=/tmp/digits`.

Any config field can be overridden, e.g. `--config.learning_rate=0.05
--config.model.arch=mobilenetv2`. Running the same command again resumes from the latest
checkpoint in --workdir. Multi-host: start one process per host with --coordinator_address,
--num_processes and --process_id (or --multihost_auto on SLURM/MPI/TPU clusters).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from rap_flax.training import metrics, parallel, train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
parallel.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_library_logs()
  parallel.initialize_distributed_from_flags()
  logging.info("Config:\n%s", FLAGS.config)
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
