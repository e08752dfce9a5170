"""One trainer per workdir: `WORKDIR/train.lock` (see rap_flax.locks), taken by process 0 for
all processes of a multi-host run."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from rap_flax import locks

FILENAME = "train.lock"
_IN_USE = ("{workdir} is in use by another trainer ({{holder}}); wait for it to finish or stop "
           "it, or train in another --workdir (eval.py and the converter may read it now).")


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock for the block; raises locks.LockedError when a live trainer
  holds it (on every process)."""
  lock = locks.DirectoryLock(workdir, FILENAME, _IN_USE.format(workdir=workdir))
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except Exception as failed:  # pylint: disable=broad-except  # the others must hear of it
      error = failed
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is None and not taken:
      error = locks.LockedError(f"Process 0 could not take the lock of {workdir}; its log "
                                "says why.")
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.release()
