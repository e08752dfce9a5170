"""What every benchmark here shares, so that none of them can mislead.

- Refuses to start on a busy machine: above LOAD_PER_CORE_LIMIT (1-minute load average per
  core) it exits with EXIT_LOADED and one line, unless --allow_loaded.
- Runs each side of a comparison in its own subprocess (`--worker=SIDE`), never two
  frameworks in one process, alternating the sides round by round (A B, B A, A B, ...).
- Records the CPU model, core count, thread settings and the load average before and after,
  and keeps every round in the JSON next to the median, min and max.

A benchmark script calls `parse_args` with its own flags, then either `worker_main` (when
started as a worker) or `alternate` + `write_report` (as the parent).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

LOAD_PER_CORE_LIMIT = 0.5
EXIT_LOADED = 3
RESULT_PREFIX = "BENCHMARK_RESULT "
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def add_common_flags(parser: argparse.ArgumentParser, output: str, rounds: int = 3) -> None:
  parser.add_argument("--rounds", type=int, default=rounds,
                      help="rounds per side, alternating sides (at least 3 for a published "
                           "figure)")
  parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                      help="CPU threads for every side (the process is pinned to this many "
                           "cores)")
  parser.add_argument("--allow_loaded", action="store_true",
                      help=f"run even when the 1-minute load average exceeds "
                           f"{LOAD_PER_CORE_LIMIT} per core (the figures then mean little)")
  parser.add_argument("--output", default=os.path.join(RESULTS_DIR, output),
                      help="JSON report path")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def load_average() -> dict[str, float]:
  one, five, fifteen = os.getloadavg()
  return {"1min": one, "5min": five, "15min": fifteen}


def check_idle(allow_loaded: bool) -> None:
  """Exits with EXIT_LOADED and one line when the machine is busy (unless allowed)."""
  cores = os.cpu_count() or 1
  one_minute = os.getloadavg()[0]
  if one_minute > LOAD_PER_CORE_LIMIT * cores and not allow_loaded:
    print(f"Refusing to benchmark: the 1-minute load average is {one_minute:.2f} on {cores} "
          f"cores (limit {LOAD_PER_CORE_LIMIT} per core); wait until the machine is idle, or "
          "pass --allow_loaded to measure anyway.", file=sys.stderr)
    sys.exit(EXIT_LOADED)


def pin_threads(threads: int) -> list[int]:
  """Pins this process to `threads` cores (before numpy, jax or torch size their pools)."""
  available = sorted(os.sched_getaffinity(0))
  if threads < 1 or threads > len(available):
    raise SystemExit(f"--threads={threads}: choose 1..{len(available)} (cores available).")
  cores = available[:threads]
  os.sched_setaffinity(0, cores)
  return cores


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, Any]:
  return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
          "platform": platform.platform(), "python": platform.python_version(),
          "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


def summary(values: Sequence[float]) -> dict[str, Any]:
  return {"median": statistics.median(values), "min": min(values), "max": max(values),
          "rounds": list(values)}


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> dict[str, float]:
  """numerator / denominator of two summaries, with the extreme ratios the rounds allow."""
  return {"median": numerator["median"] / denominator["median"],
          "min": numerator["min"] / denominator["max"],
          "max": numerator["max"] / denominator["min"]}


def run_worker(script: str, side: str, argv: Sequence[str]) -> dict[str, Any]:
  """Runs `script --worker=side argv` in a fresh interpreter; returns its result dict."""
  command = [sys.executable, script, f"--worker={side}", *argv]
  process = subprocess.run(command, capture_output=True, text=True)
  results = [line[len(RESULT_PREFIX):] for line in process.stdout.splitlines()
             if line.startswith(RESULT_PREFIX)]
  if process.returncode != 0 or not results:
    raise SystemExit(f"The {side} worker failed (exit {process.returncode}):\n"
                     f"{process.stderr[-3000:]}")
  return json.loads(results[-1])


def forwarded_argv(argv: Sequence[str] | None, *internal: str) -> list[str]:
  """The parent's command-line flags to pass on to its workers, less --worker and the flags
  in `internal` (those the parent sets for each worker itself)."""
  return [a for a in (argv if argv is not None else sys.argv[1:])
          if not a.startswith(("--worker", *internal))]


def worker_result(result: dict[str, Any]) -> None:
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def alternate(sides: Sequence[str], rounds: int,
              run_side: Callable[[str], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """{side: [result per round]}, the order of the sides reversed every other round."""
  results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
  for index in range(rounds):
    for side in (sides if index % 2 == 0 else list(reversed(sides))):
      start = time.perf_counter()
      results[side].append(run_side(side))
      print(f"  round {index + 1}/{rounds} {side}: {time.perf_counter() - start:.0f} s",
            file=sys.stderr, flush=True)
  return results


def command_line() -> str:
  return " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write_report(path: str, report: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  full = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "command": command_line(), **report}
  with open(path, "w") as f:
    json.dump(full, f, indent=2)
    f.write("\n")
  print(f"wrote {path}")
