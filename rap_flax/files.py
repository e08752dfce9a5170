"""Paths from users and files we write: `~`/$VAR expansion, atomic replacement."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def expand(path: str | os.PathLike | None) -> str | None:
  """`~` and environment variables expanded (the shell does not after `--flag=`)."""
  if path is None:
    return None
  return os.path.expandvars(os.path.expanduser(os.fspath(path)))


@contextlib.contextmanager
def atomic_output(path: str, overwrite: bool = True) -> Iterator[str]:
  """Yields a temporary file name beside `path`; on success it replaces `path` in one rename,
  on failure it is removed, so `path` is either the old file or the complete new one."""
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory; give a file name for the output.")
  if not overwrite and os.path.exists(path):
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                 dir=directory)
  os.close(handle)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the output private
  try:
    with naming_failed_writes(path):
      yield tmp
      os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def naming_failed_writes(path: str) -> Iterator[None]:
  """A failed write to an open file (a full disk) raises an OSError that names no file; it is
  raised again naming `path`, so the one-line error says where."""
  try:
    yield
  except OSError as error:
    if error.filename is not None or error.errno is None:
      raise
    raise OSError(error.errno, error.strerror, path) from error
