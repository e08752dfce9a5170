"""The entry points' jax start: noise of absent accelerators dropped, everything else kept."""

import os
import subprocess
import sys
import textwrap

import pytest

from rap_flax import platforms

SCRIPT = textwrap.dedent("""
    import os, re, sys
    from rap_flax import platforms

    print("before", file=sys.stderr, flush=True)
    with platforms.stderr_without(re.compile(r"cudart_stub")):
      os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\\n")  # as C++ does
      os.write(2, b"a real warning\\n")
      print("from python", file=sys.stderr)
    print("after", file=sys.stderr, flush=True)
""")


def test_held_back_stderr_is_replayed_in_order_without_the_dropped_lines():
  result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == ["before", "a real warning", "from python", "after"]


@pytest.mark.skipif(platforms.accelerator_present(), reason="this machine has a TPU or GPU")
def test_entry_points_start_only_the_cpu_backend_without_accelerators():
  """Without TPU or GPU and with no JAX_PLATFORMS, jax must not try (and log) the TPU or CUDA
  backends; a user's JAX_PLATFORMS is left alone."""
  code = "from rap_flax import cli; import jax; print(jax.config.jax_platforms)"
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
  assert chosen.stdout.split() == ["cpu"], chosen.stderr
  user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**env, "JAX_PLATFORMS": "cpu,tpu"}, timeout=120)
  assert user.stdout.split() == ["cpu,tpu"], user.stderr
