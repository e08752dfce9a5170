"""rap_flax.locks: a live holder refuses others, naming itself; a dead one (killed, or a lost
machine on a shared file system) is taken over with a warning."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from rap_flax import locks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_USE = "in use by {holder}"

# Holds a lock in another process until killed. argv: directory, host to record ("" = real).
_HOLDER = textwrap.dedent("""
    import socket, sys, time
    from rap_flax import locks
    if sys.argv[2]:  # another machine sharing the file system
      socket.gethostname = lambda: sys.argv[2]
    locks.HEARTBEAT_SECONDS = float(sys.argv[3])
    lock = locks.DirectoryLock(sys.argv[1], "train.lock", "in use by {holder}")
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def start_holder(directory, host="", heartbeat=locks.HEARTBEAT_SECONDS) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory), host, str(heartbeat)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO})
  assert holder.stdout.readline().strip() == "held"
  return holder


@pytest.fixture
def fast_heartbeat(monkeypatch):
  monkeypatch.setattr(locks, "HEARTBEAT_SECONDS", 0.2)
  monkeypatch.setattr(locks, "STALE_SECONDS", 2.0)


@pytest.fixture
def warnings(monkeypatch):
  logged = []
  monkeypatch.setattr(locks.logging, "warning", lambda fmt, *args: logged.append(fmt % args))
  return logged


def new_lock(directory) -> locks.DirectoryLock:
  return locks.DirectoryLock(str(directory), "train.lock", IN_USE)


def test_a_live_holder_refuses_naming_host_pid_and_start(tmp_path):
  holder = start_holder(tmp_path)
  try:
    with pytest.raises(locks.LockedError) as refused:
      new_lock(tmp_path).acquire()
    message = str(refused.value)
    assert message.startswith(f"in use by host {socket.gethostname()}, pid {holder.pid}, "
                              f"started {time.strftime('%Y-%m-%d')}")
    assert "\n" not in message
  finally:
    holder.kill()
    holder.wait()


def test_a_killed_holder_is_taken_over_with_a_warning(tmp_path, warnings):
  holder = start_holder(tmp_path)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert json.loads((tmp_path / "train.lock").read_text())["pid"] == holder.pid  # left behind
  lock = new_lock(tmp_path)
  lock.acquire()
  assert len(warnings) == 1 and f"pid {holder.pid}" in warnings[0]
  assert "no longer running" in warnings[0]
  assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
  lock.release()


def test_release_removes_the_file_and_the_next_holder_starts_quietly(tmp_path, warnings):
  with new_lock(tmp_path):
    assert (tmp_path / "train.lock").exists()
    with pytest.raises(locks.LockedError, match=f"pid {os.getpid()}"):  # same process, too
      new_lock(tmp_path).acquire()
  assert not (tmp_path / "train.lock").exists()
  with new_lock(tmp_path):
    pass
  assert warnings == []


def _record(path, host: str, heartbeat: float, beat: int = 0) -> None:
  path.write_text(json.dumps({"host": host, "pid": 4242, "started": heartbeat - 60,
                              "heartbeat": heartbeat, "beat": beat}))


def test_a_beating_holder_on_another_host_is_refused_without_kernel_locks(tmp_path,
                                                                          fast_heartbeat):
  """On a file system that does not pass flock between hosts, the heartbeat decides."""
  path = tmp_path / "train.lock"
  stop = threading.Event()

  def beat():
    count = 0
    while not stop.wait(0.2):
      count += 1
      _record(path, "other-host", time.time(), count)

  _record(path, "other-host", time.time())
  beating = threading.Thread(target=beat)
  beating.start()
  try:
    with pytest.raises(locks.LockedError, match="host other-host, pid 4242"):
      new_lock(tmp_path).acquire()
  finally:
    stop.set()
    beating.join()


def test_a_lost_machine_is_taken_over_once_its_heartbeat_stopped(tmp_path, fast_heartbeat,
                                                                 warnings):
  _record(tmp_path / "train.lock", "other-host", time.time() - 100)
  lock = new_lock(tmp_path)
  lock.acquire()
  assert len(warnings) == 1 and "host other-host" in warnings[0]
  assert "heartbeat stopped" in warnings[0]
  lock.release()


def test_a_lost_machine_whose_kernel_lock_the_file_system_keeps_is_taken_over(
    tmp_path, fast_heartbeat, warnings):
  """NFS may keep the flock of a machine that died: a silent heartbeat still frees it."""
  holder = start_holder(tmp_path, host="other-host", heartbeat=1000)  # beats never
  try:
    time.sleep(locks.STALE_SECONDS + 0.1)
    lock = new_lock(tmp_path)
    lock.acquire()  # waits 2 heartbeats for a beat, then takes over
    assert len(warnings) == 1 and "host other-host" in warnings[0]
    assert "still holds its kernel lock" in warnings[0]
    lock.release()
  finally:
    holder.kill()
    holder.wait()


def test_a_holder_that_has_not_written_its_details_yet_is_refused(tmp_path):
  import fcntl  # pylint: disable=g-import-not-at-top
  with open(tmp_path / "train.lock", "w") as starting:
    fcntl.flock(starting, fcntl.LOCK_EX)
    with pytest.raises(locks.LockedError, match="starting up"):
      new_lock(tmp_path).acquire()
