"""TensorFlow and tfds, imported without the notices TensorFlow's C++ libraries write to stderr
while loading.

tf.data runs the resize's matrix products and transposes through oneDNN, TensorFlow's default
(`TF_ENABLE_ONEDNN_OPTS` unset): 1.4x the ImageNet training input per core of the Eigen kernels
(benchmarks/README.md). Loading them prints "oneDNN custom operations are on ..." before
TensorFlow's own log level applies, so stderr's file descriptor points at /dev/null for the
import. Import both through this module wherever rap_flax may be the first to load them.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_discarded():
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


if "tensorflow" not in sys.modules:
  with _stderr_discarded():
    import tensorflow  # noqa: F401  pylint: disable=unused-import

import tensorflow as tf  # noqa: E402  pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # noqa: E402  pylint: disable=g-import-not-at-top

__all__ = ["tf", "tfds"]
