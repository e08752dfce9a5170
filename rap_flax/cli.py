"""What every command-line entry point shares: absl flags, configs through config_flags,
`~`/$VAR expansion of path flags, and errors as one or two lines instead of tracebacks.

Exit codes: 0 success, 1 training diverged (NaN/Inf), 2 a usage or input error (the message
says what to fix), EXIT_PREEMPTED (75) stopped by SIGTERM after checkpointing (run the same
command again to resume). `--verbose` (or RAP_FLAX_VERBOSE=1) shows tracebacks.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import app, flags

from rap_flax import config_fields, errors, files

EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: a scheduler may retry the same command

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
  in_main = False

  def guarded(argv):
    nonlocal in_main
    in_main = True
    return main(argv)

  try:
    app.run(guarded)
  except errors.Preempted as error:
    print(f"{error} (exit code {EXIT_PREEMPTED})", file=sys.stderr)
    sys.exit(EXIT_PREEMPTED)
  except Exception as error:  # pylint: disable=broad-except
    code, message = _reported(error, in_main)
    if verbose or code is None:
      raise  # asked for, or a bug rather than a user mistake: keep the traceback
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _reported(error: Exception, in_main: bool) -> tuple[int | None, str | None]:
  """(exit code, one-line message) for an error the user can fix; (None, None) for a bug."""
  if isinstance(error, FloatingPointError):
    return EXIT_DIVERGED, str(error)
  if not in_main and isinstance(error, (AttributeError, KeyError, TypeError, OSError)):
    return EXIT_USAGE, _config_error(error)  # raised while parsing flags and the config
  if isinstance(error, _USER_ERRORS):
    return EXIT_USAGE, _message(error)
  return None, None
