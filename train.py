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
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
flags.DEFINE_bool("multihost_auto", False,
                  "Join a multi-host job from the cluster environment (SLURM, MPI, TPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metrics.quiet_library_logs()
  parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id, FLAGS.multihost_auto)
  logging.info("Config:\n%s", FLAGS.config)
  train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
