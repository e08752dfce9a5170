"""rap_flax.cli's reading of disk errors: the path and the cause, however the library that
failed reports them (an errno, TensorFlow's or tensorstore's text, a chain of causes), and
nothing more of them on stderr."""

import asyncio
import errno
import gc
import logging as std_logging
import os

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


def _unretrieved_task_error(filename: str) -> std_logging.LogRecord:
  """What asyncio logs when it collects a failed task nobody awaited, raised in `filename`."""
  namespace = {}
  exec(compile("async def write():\n  raise ValueError('No space left on device')\n",  # pylint: disable=exec-used
               filename, "exec"), namespace)
  loop = asyncio.new_event_loop()
  records = []
  loop.set_exception_handler(lambda _, context: records.append(context))
  task = loop.create_task(namespace["write"]())
  loop.run_until_complete(asyncio.sleep(0))
  del task
  gc.collect()
  loop.close()
  (context,) = records
  error = context["exception"]
  return std_logging.LogRecord("asyncio", std_logging.ERROR, __file__, 0, context["message"],
                               None, (type(error), error, error.__traceback__))


def test_orbax_tasks_failed_after_a_failed_save_are_not_logged_again():
  workdir._ignore_late_orbax_callbacks()  # pylint: disable=protected-access
  asyncio_logger = std_logging.getLogger("asyncio")
  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "serialization.py")
  assert not asyncio_logger.filter(_unretrieved_task_error(orbax_file))
  assert asyncio_logger.filter(_unretrieved_task_error(os.path.join(os.sep, "user", "job.py")))
