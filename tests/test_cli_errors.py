"""rap_flax.cli's reading of disk errors: the path and the cause, however the library that
failed reports them (an errno, TensorFlow's or tensorstore's text, a chain of causes), and
nothing more of them on stderr."""

import asyncio
import errno
import gc
import logging as std_logging
import os
import sys
import types
from typing import Callable

import numpy as np
import pytest

from rap_flax import cli
from rap_flax.weights import workdir


def _chained(inner: BaseException, outer: BaseException) -> BaseException:
  try:
    try:
      raise inner
    except BaseException as error:
      raise outer from error
  except BaseException as error:  # pylint: disable=broad-except
    return error


@pytest.mark.parametrize("error, path, cause", [
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/home/u/run/results.json"),
     "/home/u/run/results.json", "Disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run"), "/mnt/ro/run",
     "Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/tfds/downloads"),
     "/data/tfds/downloads", "Permission denied"),
    # tensorstore through orbax: a ValueError whose text holds the cause, on a temporary path
    (ValueError('RESOURCE_EXHAUSTED: Error writing "params.x/0" in OCDBT database at local '
                'file "/w/checkpoints/4.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
                'ocdbt.process_0/": Failed writing: "/w/checkpoints/4.orbax-checkpoint-tmp/'
                'state.orbax-checkpoint-tmp/ocdbt.process_0/d/3aeb": Failed to write 585979 '
                "bytes to file 5: No space left on device [os_error_code='28']"),
     "/w/checkpoints/4", "No space left on device"),
    # TensorFlow's event writer (tf.errors.PermissionDeniedError carries no errno)
    (RuntimeError("/w/events.out.tfevents.17.vm.1.0.v2; Read-only file system\n\tCreating "
                  "writable file /w/events.out.tfevents.17.vm.1.0.v2"),
     "/w/events.out.tfevents.17.vm.1.0.v2", "Read-only file system"),
    (_chained(OSError(errno.ENOSPC, "No space left on device", "/w/parameters.txt"),
              RuntimeError("saving failed")), "/w/parameters.txt", "No space left on device"),
], ids=["quota", "read_only", "permission", "tensorstore", "tensorflow", "chained"])
def test_a_disk_error_is_one_line_with_the_path_and_the_cause(error, path, cause):
  message = cli.disk_error_message(error)
  verb = "access" if cause == "Permission denied" else "write"
  assert message.startswith(f"cannot {verb} {path}: {cause}. Files written before are kept; ")
  assert "\n" not in message


@pytest.mark.parametrize("error", [
    OSError(errno.ENOENT, "No such file or directory", "/x"), ValueError("bad rates"),
    RuntimeError("Event loop is closed")])
def test_other_errors_are_not_disk_errors(error):
  assert cli.disk_error_message(error) is None


def _unretrieved_error(failed: Callable[[asyncio.AbstractEventLoop], asyncio.Future]
                       ) -> std_logging.LogRecord:
  """What asyncio logs when it collects the failed task or future `failed(loop)` returns,
  which nobody awaited."""
  loop = asyncio.new_event_loop()
  records = []
  loop.set_exception_handler(lambda _, context: records.append(context))
  future = failed(loop)
  loop.run_until_complete(asyncio.sleep(0))
  del future
  gc.collect()
  loop.close()
  (context,) = records
  error = context["exception"]
  return std_logging.LogRecord("asyncio", std_logging.ERROR, __file__, 0, context["message"],
                               None, (type(error), error, error.__traceback__))


def _unretrieved_task_error(filename: str) -> std_logging.LogRecord:
  """A failed task, raised in `filename`."""
  namespace = {}
  exec(compile("async def write():\n  raise ValueError('No space left on device')\n",  # pylint: disable=exec-used
               filename, "exec"), namespace)
  return _unretrieved_error(lambda loop: loop.create_task(namespace["write"]()))


def _unretrieved_future_error(message: str) -> std_logging.LogRecord:
  """A failed future whose exception was raised outside Python (no traceback)."""

  def failed(loop):
    future = loop.create_future()
    future.set_exception(ValueError(message))
    return future

  return _unretrieved_error(failed)


def test_orbax_tasks_failed_after_a_failed_save_are_not_logged_again():
  workdir._ignore_late_orbax_callbacks()  # pylint: disable=protected-access
  asyncio_logger = std_logging.getLogger("asyncio")
  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
  assert not asyncio_logger.filter(_unretrieved_task_error(orbax_file))
  tensorstore_error = ("UNKNOWN: Error writing local file \"/w/checkpoints/8.orbax-checkpoint-tmp/"
                       "d/c/0\": No space left on device [tensorstore_spec='{\"driver\":"
                       "\"zarr3\"}'] [os_error_code='28']")
  assert not asyncio_logger.filter(_unretrieved_future_error(tensorstore_error))
  assert asyncio_logger.filter(_unretrieved_future_error("No space left on device"))
  assert asyncio_logger.filter(_unretrieved_task_error(os.path.join(os.sep, "user", "job.py")))


def test_a_full_disk_under_orbax_metadata_writes_names_the_checkpoint_directory(tmp_path):
  """Orbax's metadata files are written by plain Python writes: ENOSPC there names no file."""
  checkpoints = workdir.Checkpoints(str(tmp_path))

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  checkpoints._manager.save = checkpoints._manager.wait_until_finished = full_disk  # pylint: disable=protected-access
  state = types.SimpleNamespace(step=np.int32(8))
  model_spec = types.SimpleNamespace(to_dict=dict)
  for write in (lambda: checkpoints.save(state, model_spec=model_spec, best_val_top1=None),
                checkpoints.wait_until_finished):
    with pytest.raises(OSError) as raised:
      write()
    assert cli.disk_error_message(raised.value).startswith(
        f"cannot write {tmp_path / 'checkpoints'}: No space left on device.")


def test_a_reader_drops_the_closed_loop_errors_of_late_orbax_callbacks(tmp_path, monkeypatch,
                                                                       capsys):
  """A failed read's pending tensorstore callbacks may print through sys.excepthook before
  the failure reaches the caller: a read-only Checkpoints drops them from the start."""
  (tmp_path / "checkpoints").mkdir()
  monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  workdir.Checkpoints(str(tmp_path), read_only=True)
  for error in (RuntimeError("Event loop is closed"), RuntimeError("something else")):
    try:
      raise error
    except RuntimeError:
      sys.excepthook(*sys.exc_info())
  printed = capsys.readouterr().err
  assert "something else" in printed and "Event loop is closed" not in printed
