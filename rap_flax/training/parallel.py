"""Data parallelism over every device of every host with one jitted program.

The mesh has a single "data" axis spanning all devices. Batches are sharded along it, the
train state is replicated, and jax.jit with these shardings inserts the gradient all-reduce.
Reductions over the batch axis inside the model (BatchNorm's mean and variance) are therefore
taken over the global batch: BatchNorm behaves like SyncBatchNorm, and a run on 8 devices
computes what one device computes on the same global batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def define_distributed_flags() -> None:
  """The multi-host flags of train.py and eval.py (read by initialize_distributed_from_flags)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
  flags.DEFINE_integer("process_id", None, "Index of this process (multi-host).")
  flags.DEFINE_bool("multihost_auto", False,
                    "Join a multi-host job from the cluster environment (SLURM, MPI, TPU).")


def initialize_distributed_from_flags() -> None:
  values = flags.FLAGS
  initialize_distributed(values.coordinator_address, values.num_processes, values.process_id,
                         values.multihost_auto)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           auto_detect: bool = False) -> None:
  """Joins a multi-host job; a no-op for a single process.

  Either name the coordinator explicitly (e.g. "10.0.0.1:1234" plus num_processes and
  process_id), or set auto_detect for clusters jax recognises (SLURM, Open MPI, Cloud TPU).
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("coordinator_address needs num_processes and process_id as well.")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif auto_detect:
    jax.distributed.initialize()
  else:
    return
  logging.info("Process %d of %d; %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def create_mesh(devices=None) -> Mesh:
  """One "data" axis over `devices` (default: every device of every host)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def per_host_batch_size(global_batch_size: int, name: str = "batch_size") -> int:
  """This host's share of a global batch; the batch must split evenly over the devices."""
  devices = jax.device_count()
  if global_batch_size % devices:
    lower = global_batch_size // devices * devices
    raise ValueError(
        f"{name}={global_batch_size} is not divisible by the {devices} devices "
        f"({jax.process_count()} host(s)). Use a multiple of {devices}, e.g. "
        f"--config.{name}={max(lower, devices)} or {lower + devices}.")
  return global_batch_size // jax.process_count()


def make_global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> Any:
  """Assembles every host's part of the batch into arrays sharded over all devices."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
