"""Which jax backends an entry point starts, and a quiet start where accelerators are absent.

The dev extra installs libtpu and jax's CUDA plugin so that `rap_flax.aot` can compile for TPUs
and GPUs on any machine. On a machine with neither, jax would still probe both at start-up:
libtpu prints pages of warnings about the TPU it cannot find, the CUDA plugin logs a
traceback about the CUDA libraries it cannot load, and CUDA's loader stubs print one line
each when jax is imported. The entry points (train.py, eval.py, the `python -m rap_flax.*`
tools) therefore start jax through `prepare_jax()`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

# Printed by the CUDA plugin's libraries as they load without CUDA (absl's notice that its log
# is not initialised precedes each one). Nothing else written while jax is imported is dropped.
_ABSENT_CUDA_NOTICES = re.compile(
    r"cudart_stub\.cc.*Could not find cuda drivers|"
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called")


@contextlib.contextmanager
def stderr_without(pattern: re.Pattern) -> Iterator[None]:
  """Holds back what is written to file descriptor 2 (C++ included) and replays it afterwards,
  less the lines matching `pattern`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      lines = held.read().decode(errors="replace").splitlines(keepends=True)
      sys.stderr.write("".join(line for line in lines if not pattern.search(line)))
      sys.stderr.flush()


def accelerator_present() -> bool:
  """Whether a TPU chip or an NVIDIA or AMD GPU is attached (jax's own checks)."""
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
  return bool(hardware_utils.num_available_tpu_chips_and_device_id()[0]
              or hardware_utils.has_visible_nvidia_gpu()
              or hardware_utils.num_available_amd_gpus(stop_at=1))


def prepare_jax() -> None:
  """Imports jax, chooses its backends and loads its plugins, without the noise above.

  Where the user chose no backends (JAX_PLATFORMS, or jax_platforms set in code) and no
  accelerator is attached, only the CPU backend will start; otherwise jax picks as it always
  does. Backends themselves start later, on first use (after jax.distributed.initialize).
  """
  with stderr_without(_ABSENT_CUDA_NOTICES):
    import jax  # pylint: disable=g-import-not-at-top
    try:
      from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
      if not (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
              or xla_bridge.backends_are_initialized() or accelerator_present()):
        jax.config.update("jax_platforms", "cpu")
      # Plugins load (and print) here rather than inside the first jax.devices().
      xla_bridge._discover_and_register_pjrt_plugins()  # pylint: disable=protected-access
    except (ImportError, AttributeError):
      pass  # jax's internals moved (another jax version): it starts as it always does
