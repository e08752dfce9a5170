"""The README's "Sizing for TPU and GPU" table: `python -m rap_flax.aot` for three recipes on
two TPU slices, plus the collectives of the headline model on a 256-chip slice.

  python benchmarks/sizing.py                    # all rows (compiles: ~1 hour on 2 cores)
  python benchmarks/sizing.py --rows=v3_large_srap@v5e:2x4
  python benchmarks/sizing.py --print_only       # the table from benchmarks/results/sizing.json

Each row is one `python -m rap_flax.aot` process (the command is in the JSON beside its
report), at the ImageNet recipe (configs/imagenet_mafc.py: global batch 256, 224px, 1000
classes) with bfloat16 compute. Every figure is derived from the compiled program, not
measured on hardware; the compile times are this machine's. No load check: nothing is timed.
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
RECIPE = "configs/imagenet_mafc.py"
# name: (label, config argument, overrides)
MODELS = {
    "v3_large_srap": ("MobileNetV3-large + SRAP", f"{RECIPE}:mobilenetv3_large",
                      ("--config.model.attention=srap",)),
    "v1_mafc": ("MobileNetV1 + MAFC", RECIPE, ()),
    "v2_srap": ("MobileNetV2 + SRAP", f"{RECIPE}:mobilenetv2", ("--config.model.attention=srap",)),
}
TABLE_TOPOLOGIES = ("v5e:2x4", "v6e:2x4")
# The collectives of a pod-sized slice: 32 images per chip, no batch search.
POD = ("v3_large_srap", "v5e:16x16", ("--config.batch_size=8192", "--config.eval_batch_size=8192",
                                      "--largest_batch=none"))
COMMON = ("--config.model.dtype=bfloat16",)


def all_rows() -> list[tuple[str, str, tuple[str, ...]]]:
  rows = [(model, topology, ()) for model in MODELS for topology in TABLE_TOPOLOGIES]
  return rows + [POD]


def row_key(model: str, topology: str) -> str:
  return f"{model}@{topology}"


def aot_command(model: str, topology: str, extra: tuple[str, ...], output: str) -> list[str]:
  _, config, overrides = MODELS[model]
  return ["-m", "rap_flax.aot", f"--config={config}", f"--topology={topology}", *overrides,
          *COMMON, *extra, f"--output={output}"]


def run_row(model: str, topology: str, extra: tuple[str, ...]) -> dict:
  with tempfile.TemporaryDirectory() as directory:
    output = os.path.join(directory, "report.json")
    command = aot_command(model, topology, extra, output)
    start = time.perf_counter()
    process = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True,
                             text=True)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
      return {"command": "python " + " ".join(command[:-1]), "error": process.stderr[-2000:],
              "seconds": seconds}
    with open(output) as f:
      report = json.load(f)
  return {"command": "python " + " ".join(command[:-1]), "seconds": seconds,
          "summary": process.stdout.strip().splitlines(), "report": report}


def _collectives(train: dict) -> str:
  return ", ".join(f"{kind} x{c['count']} ({c['bytes'] / 1e6:.1f} MB)"
                   for kind, c in sorted(train["collectives"].items())) or "none"


def table(results: dict) -> list[str]:
  """The README table (markdown lines) from the rows' reports."""
  lines = ["| model | slice | per-chip memory at batch 256 (train / eval) | largest global "
           "batch that fits | collectives per train step | MB/image (cost analysis; off-chip) "
           "| roofline images/s per chip (cost analysis; off-chip) |",
           "|---|---|---|---:|---|---:|---:|"]
  for model, topology, extra in all_rows():
    if extra:
      continue
    row = results.get(row_key(model, topology))
    if row is None or "report" not in row:
      continue
    report = row["report"]
    train, evaluation = report["train_step"], report["eval_step"]
    largest = report["largest_batch"] or {}
    hbm = report["chip"]["hbm_bytes"] / 2**30
    memory = (f"{train['memory']['total_bytes'] / 2**30:.2f} / "
              f"{evaluation['memory']['total_bytes'] / 2**30:.2f} GiB of {hbm:.2f}")
    roofline = train["roofline_estimate"]
    largest_global = f"{largest['global']:,}" if largest.get("global") else "unknown"
    lines.append(
        f"| {MODELS[model][0]} | {report['topology']} "
        f"({report['devices']} x {report['chip']['name']}) "
        f"| {memory} | {largest_global} | {_collectives(train)} "
        f"| {train['bytes_per_image'] / 1e6:.1f}; {train['off_chip_bytes_per_image'] / 1e6:.1f} "
        f"| {roofline['images_per_s_per_device']:,.0f}; "
        f"{roofline['off_chip_images_per_s_per_device']:,.0f} |")
  return lines


def pod_line(results: dict) -> str | None:
  model, topology, _ = POD
  row = results.get(row_key(model, topology))
  if row is None or "report" not in row:
    return None
  report = row["report"]
  return (f"{MODELS[model][0]} on {topology} ({report['devices']} chips, "
          f"{report['hosts']} hosts, global batch {report['global_batch']}): "
          f"{_collectives(report['train_step'])} per train step.")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default=None,
                      help="comma-separated MODEL@TOPOLOGY keys to (re)compile; default all")
  parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR, "sizing.json"))
  parser.add_argument("--print_only", action="store_true",
                      help="print the table from --output without compiling")
  args = parser.parse_args(argv)
  results = {}
  if os.path.exists(args.output):
    with open(args.output) as f:
      results = json.load(f)["rows"]
  if not args.print_only:
    wanted = set(args.rows.split(",")) if args.rows else None
    for model, topology, extra in all_rows():
      key = row_key(model, topology)
      if wanted is not None and key not in wanted:
        continue
      print(f"{key}: compiling ...", file=sys.stderr, flush=True)
      results[key] = run_row(model, topology, extra)
      print(f"{key}: {'FAILED' if 'error' in results[key] else 'done'} in "
            f"{results[key]['seconds']:.0f} s", file=sys.stderr, flush=True)
      harness.write_report(args.output, {"benchmark": "sizing", "rows": results,
                                         "machine": harness.machine(os.cpu_count() or 1)})
  print("\n".join(table(results)))
  line = pod_line(results)
  if line:
    print("\n" + line)


if __name__ == "__main__":
  main()
