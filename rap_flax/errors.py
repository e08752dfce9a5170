"""Exceptions that the command-line entry points turn into exit codes (see rap_flax.cli).

Kept apart and free of heavy imports, so that `rap_flax.cli` (and every entry point that
uses it) can catch them without loading the training stack.
"""


class Preempted(Exception):
  """Training stopped early on SIGTERM after writing a checkpoint; rerun to resume."""


class Interrupted(Preempted):
  """Training stopped early on SIGINT (Ctrl-C) after writing a checkpoint; rerun to resume."""
