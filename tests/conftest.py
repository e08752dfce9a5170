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


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
  """The module-scoped fixtures train models (30-90 s each). Under xdist each worker builds
  its own, so the tests of a module that use one go to a single worker (`--dist=loadgroup`,
  in pyproject.toml's addopts)."""
  for item in items:
    definitions = getattr(item, "_fixtureinfo", None)
    if definitions is None:
      continue
    if any(fixture.scope == "module" for name in item.fixturenames
           for fixture in definitions.name2fixturedefs.get(name, ())):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
