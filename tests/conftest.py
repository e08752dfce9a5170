"""Suite-wide settings."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_torch():
  """torch's intra-op threads spin-wait on a busy 2-core machine (7x slower tests)."""
  try:
    import torch
  except ImportError:
    yield
    return
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
