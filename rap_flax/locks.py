"""One writer per directory: a lock file that names its holder.

Two trainers on one workdir overwrite each other's checkpoints and results, so a trainer
holds `WORKDIR/train.lock` for its whole run (rap_flax.training.workdir_lock) and a second
one is refused at once, told who holds it; evaluation and export only read a workdir and
take no lock. `prepare` holds one per dataset while it writes into a data_dir.

Two mechanisms together, because neither is enough alone on shared file systems:
- a kernel lock (flock) on the file: released by the kernel when its process dies (kill -9
  included), so a stale lock on the same host is recognised at once;
- the holder's host, pid and start time in the file, with a heartbeat rewritten every
  HEARTBEAT_SECONDS: on a file system that does not pass flock between hosts (some NFS
  set-ups) the heartbeat tells a live holder on another host from a dead one, and a lock
  that the file system still keeps for a lost machine is taken over once its heartbeat has
  stopped for STALE_SECONDS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import threading
import time

from absl import logging

from rap_flax import files

HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0  # a heartbeat this old (by the reader's clock, or unchanged this long)


class LockedError(ValueError):
  """Another live process holds the lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
  host: str
  pid: int
  started: float  # time.time() of the start
  heartbeat: float
  beat: int  # incremented at each heartbeat, so that readers need not trust clocks

  def describe(self) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
    return f"host {self.host}, pid {self.pid}, started {started}"


def _parse(text: str) -> Holder | None:
  try:
    fields = json.loads(text)
    return Holder(str(fields["host"]), int(fields["pid"]), float(fields["started"]),
                  float(fields["heartbeat"]), int(fields["beat"]))
  except (ValueError, KeyError, TypeError):
    return None


class DirectoryLock:
  """`directory`/`filename`, held from `acquire()` to `release()`. `in_use` is the message
  for a refusal, with "{holder}" where the holder's host, pid and start time go."""

  def __init__(self, directory: str, filename: str, in_use: str):
    self.directory = directory
    self.path = os.path.join(directory, filename)
    self._in_use = in_use
    self._fd: int | None = None
    self._holder: Holder | None = None
    self._stop = threading.Event()
    self._heartbeat: threading.Thread | None = None

  def acquire(self) -> None:
    """Takes the lock, or raises LockedError naming the live holder. On a read-only file
    system nobody can write the directory, and no lock is taken."""
    os.makedirs(self.directory, exist_ok=True)
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as error:
        if error.errno == errno.EROFS:
          return  # nobody can write it either; the first write says why the run cannot
        raise
      kernel_lock = _try_flock(fd)
      if _is_current(fd, self.path):
        break
      os.close(fd)  # a holder removed that file while releasing it: open the new one
    try:
      self._check_previous(fd, kernel_lock)
      self._fd = fd
      now = time.time()
      self._holder = Holder(socket.gethostname(), os.getpid(), now, now, 0)
      self._write()
    except BaseException:
      self._fd = None
      os.close(fd)
      raise
    self._heartbeat = threading.Thread(target=self._beat, name="lock-heartbeat",
                                       daemon=True)
    self._heartbeat.start()

  def _check_previous(self, fd: int, kernel_lock: bool) -> None:
    """Raises if the previous holder recorded in the file is alive; warns if it is not."""
    text = _read(fd)
    previous = _parse(text)
    if previous is None:
      if kernel_lock:  # released (empty), or its holder died while writing it
        return
      raise self._locked("another process (starting up)")
    if previous.host == socket.gethostname():
      if not kernel_lock:  # the kernel says its process is alive
        raise self._locked(previous.describe())
      logging.warning("Taking over %s from %s: that process is no longer running (killed or "
                      "crashed).", self.path, previous.describe())
      return
    age = time.time() - previous.heartbeat
    if not kernel_lock and age < STALE_SECONDS:
      raise self._locked(previous.describe())
    # Another host, and either the file system does not pass kernel locks between hosts or
    # its heartbeat looks old: watch whether it still beats (clocks of hosts may differ).
    watch = min(STALE_SECONDS, max(STALE_SECONDS - age, 2 * HEARTBEAT_SECONDS))
    deadline = time.monotonic() + watch
    while time.monotonic() < deadline:
      time.sleep(min(0.5, HEARTBEAT_SECONDS / 4))
      now_text = _read(fd)
      if now_text != text:
        raise self._locked((_parse(now_text) or previous).describe())
    logging.warning("Taking over %s from %s: its heartbeat stopped %.0f s ago (machine lost "
                    "or process killed)%s.", self.path, previous.describe(),
                    max(age, watch), "" if kernel_lock else
                    "; the file system still holds its kernel lock, continuing without it")

  def _locked(self, holder: str) -> LockedError:
    return LockedError(self._in_use.format(holder=holder))

  def _write(self) -> None:
    with files.naming_failed_writes(self.path):
      os.lseek(self._fd, 0, os.SEEK_SET)
      os.write(self._fd, json.dumps(dataclasses.asdict(self._holder)).encode())
      os.ftruncate(self._fd, os.lseek(self._fd, 0, os.SEEK_CUR))
      os.fsync(self._fd)

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      self._holder = dataclasses.replace(self._holder, heartbeat=time.time(),
                                         beat=self._holder.beat + 1)
      try:
        self._write()
      except OSError:  # a full or failing disk: the training reports it where it writes
        pass

  def __enter__(self) -> DirectoryLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def release(self) -> None:
    """Removes the file, then drops the kernel lock: whoever opened the file meanwhile was
    refused, or finds that it was removed and opens a new one (see acquire)."""
    if self._fd is None:
      return
    self._stop.set()
    self._heartbeat.join()
    with contextlib.suppress(OSError):
      os.ftruncate(self._fd, 0)
      os.remove(self.path)
    os.close(self._fd)
    self._fd = None


def _is_current(fd: int, path: str) -> bool:
  """Whether `fd` is still the file at `path`."""
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def _try_flock(fd: int) -> bool:
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as error:
    if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      return False
    if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
      return True  # no kernel locks on this file system: the heartbeat decides
    raise


def _read(fd: int) -> str:
  """The file's text; a read that catches a heartbeat half-written is retried."""
  for _ in range(5):
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    if not text or _parse(text) is not None:
      return text
    time.sleep(0.05)
  return text
