"""Trains a model: `python train.py --config=configs/digits_srap.py --workdir=/tmp/digits`.

Any config field can be overridden, e.g. `--config.learning_rate=0.05
--config.model.arch=mobilenetv2`. Running the same command again resumes from the latest
readable checkpoint in --workdir; a finished workdir says so and exits 0. Start from other
weights with --config.init_from=PATH (a workdir, a converter directory, a .pth or
.safetensors file). Multi-host: start one process per host with --coordinator_address,
--num_processes and --process_id (or --multihost_auto on SLURM/MPI/TPU clusters).

Exit codes: 0 done, 1 diverged (NaN/Inf loss), 2 bad input (the message says what to fix;
also a full or read-only disk, or a workdir another trainer holds), 75 stopped by SIGTERM
and 130 by Ctrl-C, after checkpointing (rerun the same command to resume).
"""

from absl import flags, logging

from rap_flax import cli
from rap_flax.training import config_lib, parallel, train_lib

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and results.")
parallel.define_distributed_flags()
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}; flags take the form --name=value.")
  config = cli.load_config()
  config_lib.validate_config(config)  # a bad value is one line, before anything is printed
  parallel.initialize_distributed_from_flags()
  logging.info("Config (differences from the defaults):\n%s", config_lib.describe(config))
  train_lib.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run(main)
