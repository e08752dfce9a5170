"""The README demo, measured: `train.py --config=configs/digits_srap.py` with several seeds.

Each seed trains in a fresh workdir (cold compile included) in its own process, one after the
other; the JSON keeps every run's final and best validation top-1 and its wall time.

  python benchmarks/demo_accuracy.py [--seeds=0,1,2]

Refuses to start on a busy machine (see harness.py). Writes
benchmarks/results/demo_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "digits_srap.py")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--allow_loaded", action="store_true",
                      help="run even on a busy machine (the wall times then mean little)")
  parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR,
                                                       "demo_accuracy.json"))
  return parser.parse_args(argv)


def train(seed: int) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), f"--config={CONFIG}",
         f"--workdir={workdir}", f"--config.seed={seed}"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if process.returncode != 0:
      raise SystemExit(f"seed {seed} failed:\n{process.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
  return {"seed": seed, "wall_s": wall, "final_val_top1": results["final"]["top1"],
          "best_val_top1": results["best_val_top1"], "steps": results["step"]}


def main(argv=None) -> None:
  args = parse_args(argv)
  harness.check_idle(args.allow_loaded)
  load_before = harness.load_average()
  runs = []
  for seed in (int(s) for s in args.seeds.split(",")):
    runs.append(train(seed))
    run = runs[-1]
    print(f"seed {seed}: final val top-1 {100 * run['final_val_top1']:.2f}% (best "
          f"{100 * run['best_val_top1']:.2f}%), {run['wall_s']:.0f} s", flush=True)
  finals = [r["final_val_top1"] for r in runs]
  walls = [r["wall_s"] for r in runs]
  print(f"final val top-1 {100 * min(finals):.2f}-{100 * max(finals):.2f}% over {len(runs)} "
        f"seeds; {min(walls):.0f}-{max(walls):.0f} s each")
  harness.write_report(args.output, {
      "benchmark": "demo_accuracy", "config": os.path.relpath(CONFIG, REPO),
      "machine": harness.machine(os.cpu_count() or 1), "load_before": load_before,
      "load_after": harness.load_average(), "runs": runs,
      "final_val_top1": harness.summary(finals), "wall_s": harness.summary(walls)})


if __name__ == "__main__":
  main()
