"""What every command-line entry point shares: absl flags, configs through config_flags,
`~`/$VAR expansion of path flags, and errors as one or two lines instead of tracebacks.

Exit codes: 0 success (and --help), 1 training diverged (NaN/Inf), 2 a usage or input error
(the message says what to fix; a full, read-only or over-quota disk included),
EXIT_PREEMPTED (75) stopped by SIGTERM after checkpointing (run the same command again to
resume), EXIT_INTERRUPTED (130) stopped by Ctrl-C (SIGINT; during training after
checkpointing, like SIGTERM). `--verbose` (or RAP_FLAX_VERBOSE=1) shows tracebacks.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import re
import sys
from typing import Callable

from absl import app, flags, logging

from rap_flax import config_fields, errors, files, platforms

platforms.prepare_jax()  # before the entry point's own imports pull jax in

EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: a scheduler may retry the same command
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

# Flags whose values are paths (also inside --config.FIELD=VALUE overrides).
PATH_FLAGS = ("config", "workdir", "weights", "output", "input", "source", "data_dir",
              "config.data.data_dir", "config.init_from")
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
                NotADirectoryError, PermissionError)

flags.DEFINE_bool("verbose", False, "Show the traceback of an error (also RAP_FLAX_VERBOSE=1).")


def define_config_flag(help_text: str = "Config file (configs/NAME.py or configs/NAME.py:ARG); "
                       "override fields with --config.FIELD=VALUE.", required: bool = True):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)
  if required:
    flags.mark_flag_as_required("config")


def load_config():
  """flags.FLAGS.config, turning a config that cannot be loaded into a ValueError."""
  try:
    config = flags.FLAGS.config
    config.get("model")  # config_flags loads lazily: make any loading error surface here
  except (OSError, AttributeError, KeyError, TypeError, SyntaxError) as error:
    raise ValueError(_config_error(error)) from error
  if config is None:
    raise ValueError("Pass --config=configs/NAME.py.")
  return config


def _unknown_override() -> str | None:
  """The message for a --config.FIELD=VALUE naming a field the loaded config lacks."""
  files_given = [arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--config=")]
  if not files_given:
    return None
  path, _, argument = files_given[-1].partition(":")
  try:
    loaded = config_fields.load_recipe(path, *([argument] if argument else []))
  except Exception:  # pylint: disable=broad-except  # the config's own error is reported then
    return None
  known = config_fields.flatten(loaded)
  for arg in sys.argv[1:]:
    if arg.startswith("--config."):
      name = arg[len("--config."):].split("=", 1)[0]
      if name not in known and not any(field.startswith(name + ".") for field in known):
        close = config_fields.closest(name, known)
        hint = f"; did you mean --config.{close}?" if close else ""
        return f"Unknown config field --config.{name}{hint}"
  return None


def _config_error(error: BaseException) -> str:
  unknown = _unknown_override()
  if unknown:
    return unknown
  text = str(error)
  missing = re.search(r"No such file or directory: '([^']+)'", text)
  if missing:
    return (f"Config file {missing.group(1)} does not exist; pass --config=configs/NAME.py "
            "(run from the repository root, or give its full path).")
  directory = re.search(r"Is a directory: '([^']+)'", text)
  if directory:
    return (f"--config={directory.group(1)} is a directory; pass a config file, "
            "--config=configs/NAME.py.")
  if "earlier failure to load" in text and error.__context__ is not None:
    return _config_error(error.__context__)
  text = text.replace("\\n", "\n").strip("'\"")
  return "Bad --config: " + " ".join(text.split())


def _expand_paths(argv: list[str]) -> list[str]:
  expanded = []
  for arg in argv:
    name, sep, value = arg.partition("=")
    if sep and name.lstrip("-") in PATH_FLAGS:
      arg = f"{name}={files.expand(value)}"
    expanded.append(arg)
  return expanded


def _message(error: BaseException) -> str:
  text = str(error).strip() or type(error).__name__
  if isinstance(error, KeyError):
    text = text.strip("'\"")
  return text


def run(main: Callable[[list[str]], int | None]) -> None:
  """app.run(main) with clean errors and documented exit codes (see the module docstring)."""
  verbose = "--verbose" in sys.argv or os.environ.get("RAP_FLAX_VERBOSE", "") not in ("", "0")
  sys.argv = [sys.argv[0]] + _expand_paths(sys.argv[1:])
  quiet_library_logs(verbose)
  for name in ("config", "verbose"):  # shown by --help beside the entry point's own flags
    if name in flags.FLAGS:
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  in_main = False

  def guarded(argv):
    nonlocal in_main
    in_main = True
    return main(argv)

  try:
    app.run(guarded, flags_parser=_parse_flags)
  except errors.Preempted as error:
    code = EXIT_INTERRUPTED if isinstance(error, errors.Interrupted) else EXIT_PREEMPTED
    _report(f"{error} (exit code {code})")
    sys.exit(code)
  except KeyboardInterrupt:
    if verbose:
      raise
    _report(f"Interrupted (Ctrl-C) (exit code {EXIT_INTERRUPTED})")
    sys.exit(EXIT_INTERRUPTED)
  except Exception as error:  # pylint: disable=broad-except
    code, message = _reported(error, in_main)
    if verbose or code is None:
      raise  # asked for, or a bug rather than a user mistake: keep the traceback
    _report(f"error: {message}")
    sys.exit(code)


def _report(line: str) -> None:
  """One write, so that a line logged meanwhile by another thread cannot land inside it
  (print writes the text and its newline separately)."""
  sys.stderr.write(line + "\n")
  sys.stderr.flush()


_HELP_FLAGS = ("help", "?", "helpshort", "helpfull", "helpxml")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with its errors on one line and exit 2 (a usage error), and help
  with exit 0."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    unknown = _unknown_override()
    message = unknown or " ".join(str(error).split())
    _report(f"error: {message} (--help lists the flags)")
    sys.exit(EXIT_USAGE)
  except SystemExit as exit_:
    asked = any(arg.lstrip("-").split("=", 1)[0] in _HELP_FLAGS for arg in argv[1:]
                if arg.startswith("-"))
    if asked and exit_.code == 1:  # absl exits 1 after printing the help
      sys.exit(0)
    raise


def _reported(error: Exception, in_main: bool) -> tuple[int | None, str | None]:
  """(exit code, one-line message) for an error the user can fix; (None, None) for a bug."""
  if isinstance(error, FloatingPointError):
    return EXIT_DIVERGED, str(error)
  disk = disk_error_message(error)
  if disk:
    return EXIT_USAGE, disk
  if not in_main and isinstance(error, (AttributeError, KeyError, TypeError, OSError)):
    return EXIT_USAGE, _config_error(error)  # raised while parsing flags and the config
  if isinstance(error, _USER_ERRORS):
    return EXIT_USAGE, _message(error)
  return None, None


# What a failed write says about the disk, as an errno and as the text of the errors that
# carry no errno (TensorFlow's file errors, tensorstore's through orbax).
_DISK_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system",
                errno.EDQUOT: "Disk quota exceeded", errno.EACCES: "Permission denied",
                errno.EPERM: "Operation not permitted"}
_DISK_FIX = {
    errno.ENOSPC: "free some space (or pass another --workdir / --output), then run the same "
                  "command again",
    errno.EDQUOT: "free some of your quota (or write elsewhere), then run the same command "
                  "again",
    errno.EROFS: "write somewhere writable (another --workdir / --output / --data_dir)",
    errno.EACCES: "fix the permissions or write somewhere else",
    errno.EPERM: "fix the permissions or write somewhere else",
}
_QUOTED_PATH = re.compile(r"""["'`](/[^"'`]+)["'`]""")
_BARE_PATH = re.compile(r"(?<![\w.])(/[\w.+@%=,:~-]+(?:/[\w.+@%=,:~-]*)*)")


def disk_error_message(error: BaseException) -> str | None:
  """One line naming the path and the cause, when `error` (or what caused it) is a full,
  read-only or over-quota disk or a denied write; else None."""
  for cause in _chain(error):
    code = getattr(cause, "errno", None)
    path = getattr(cause, "filename", None)
    if code not in _DISK_ERRNOS:
      text = str(cause)
      code = next((c for c, phrase in _DISK_ERRNOS.items() if phrase in text), None)
      if code is None:
        continue
      path = _path_in(text)
    path = _readable_path(os.fspath(path)) if path else None
    verb = "access" if code in (errno.EACCES, errno.EPERM) else "write"  # may be a read
    where = f"cannot {verb} {path}" if path else f"cannot {verb} a file"
    return (f"{where}: {_DISK_ERRNOS[code]}. Files written before are kept; "
            f"{_DISK_FIX[code]}.")
  return None


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _path_in(text: str) -> str | None:
  paths = _QUOTED_PATH.findall(text) or _BARE_PATH.findall(text)
  return max(paths, key=len).rstrip(":;,.") if paths else None


def _readable_path(path: str) -> str:
  """A checkpoint's temporary files stand for the checkpoint directory being written."""
  marker = path.find(".orbax-checkpoint-tmp")
  return path[:marker] if marker >= 0 else path


def quiet_library_logs(verbose: bool = False) -> None:
  """Keeps jax's and orbax's warnings but drops their INFO lines (see _LibraryNoise)."""
  logging.get_absl_handler().addFilter(_LibraryNoise(verbose))


class _LibraryNoise(std_logging.Filter):
  """Drops the INFO lines of jax and orbax (backend probing such as "Unable to initialize
  backend 'tpu'"; dozens of lines per checkpoint save or read) and, unless --verbose, the
  tracebacks orbax logs from its threads: the error reaches the caller, reported once."""

  def __init__(self, verbose: bool):
    super().__init__()
    self._verbose = verbose

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "/jax/_src/" in record.pathname:
      return record.levelno >= std_logging.WARNING
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    if record.levelno >= std_logging.ERROR and record.exc_info and not self._verbose:
      return False
    # Periodic checkpoints deliberately carry no validation metric (only those written after
    # an evaluation do), which orbax would warn about at every save.
    return "did not provide metrics" not in record.getMessage()
