"""Depthwise conv speed: every DepthwiseConv implementation vs the grouped conv and torch.

Times the forward pass and the forward + backward pass (output, input gradient and kernel
gradient for a fixed random output cotangent, as `y.backward(ct)` in torch) at the
depthwise shapes of MobileNetV3-large at 224, plus the 64-channel stride-1 shape the
project brief quotes. JAX functions are jitted and compiled before timing (compile time
is reported separately); each call is timed to `block_until_ready`. The candidates of
one (shape, pass) are timed round-robin so that load from other processes hits them
alike; the reported figure is the median over `--repeats` rounds.

  python benchmarks/depthwise_conv.py [--output benchmarks/results/depthwise_conv.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from rap_flax.layers import depthwise  # pylint: disable=g-import-not-at-top

BASELINE = "grouped"
TORCH = "torch"


@dataclasses.dataclass(frozen=True)
class Shape:
  height: int
  width: int
  channels: int
  kernel_size: int
  stride: int

  @property
  def name(self) -> str:
    return (f"{self.height}x{self.width}x{self.channels} k{self.kernel_size} "
            f"s{self.stride}")


# MobileNetV3-large at 224: first bneck (16 ch), the stride-2 64-channel expansion, the
# 5x5 stride-2 layer, a 14x14 layer, the last 5x5 layer; then the brief's reference shape.
SHAPES = (
    Shape(112, 112, 16, 3, 1),
    Shape(112, 112, 64, 3, 2),
    Shape(56, 56, 72, 5, 2),
    Shape(14, 14, 480, 3, 1),
    Shape(7, 7, 960, 5, 1),
    Shape(112, 112, 64, 3, 1),
)


def _parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", default="benchmarks/results/depthwise_conv.json",
                      help="where to write the JSON results")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds per candidate")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  parser.add_argument("--threads", type=int, default=os.cpu_count(),
                      help="torch intra-op threads (XLA:CPU uses every core)")
  parser.add_argument("--implementations", default=",".join(depthwise.IMPLEMENTATIONS),
                      help="comma-separated DepthwiseConv implementations to time")
  parser.add_argument("--no-torch", action="store_true", help="skip the torch reference")
  parser.add_argument("--shapes", default="all",
                      help="'all' or comma-separated indices into SHAPES")
  return parser.parse_args(argv)


def _jax_candidates(implementations, shape, x, kernel, cotangent):
  """name -> {pass: (callable taking no args, compile seconds)}."""
  candidates = {}
  for name in implementations:
    def forward(x, kernel, name=name):
      return depthwise.depthwise_conv(x, kernel, shape.stride, name)

    def forward_backward(x, kernel, cotangent, forward=forward):
      y, vjp = jax.vjp(forward, x, kernel)
      return (y,) + vjp(cotangent)

    passes = {}
    for pass_name, fn, args in (("forward", forward, (x, kernel)),
                                ("forward_backward", forward_backward, (x, kernel, cotangent))):
      start = time.perf_counter()
      compiled = jax.jit(fn).lower(*args).compile()
      compile_s = time.perf_counter() - start
      passes[pass_name] = (lambda compiled=compiled, args=args:
                           jax.block_until_ready(compiled(*args)), compile_s)
    candidates[name] = passes
  return candidates


def _torch_candidate(shape, x, kernel, cotangent):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  # torch's native layouts: NCHW activations, (C, 1, kh, kw) depthwise weights.
  x_t = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
  w_t = torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).transpose(3, 2, 0, 1)))
  ct_t = torch.from_numpy(np.ascontiguousarray(np.asarray(cotangent).transpose(0, 3, 1, 2)))
  conv = lambda x, w: F.conv2d(x, w, stride=shape.stride, padding=shape.kernel_size // 2,
                               groups=shape.channels)

  def forward():
    with torch.no_grad():
      return conv(x_t, w_t)

  def forward_backward():
    x_g = x_t.detach().requires_grad_()
    w_g = w_t.detach().requires_grad_()
    y = conv(x_g, w_g)
    return (y,) + torch.autograd.grad(y, (x_g, w_g), ct_t)

  return {"forward": (forward, 0.0), "forward_backward": (forward_backward, 0.0)}, forward


def _time_round_robin(calls, repeats, warmup):
  """name -> (wall ms list, process cpu ms list)."""
  for call in calls.values():
    for _ in range(warmup):
      call()
  wall = {name: [] for name in calls}
  cpu = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      cpu_start, wall_start = time.process_time(), time.perf_counter()
      call()
      wall[name].append(1e3 * (time.perf_counter() - wall_start))
      cpu[name].append(1e3 * (time.process_time() - cpu_start))
  return wall, cpu


def run(args) -> dict:
  implementations = [name for name in args.implementations.split(",") if name]
  for name in implementations:
    depthwise.resolve_implementation(name)  # rejects unknown names early
  if BASELINE not in implementations:
    implementations.insert(0, BASELINE)
  shapes = (SHAPES if args.shapes == "all"
            else [SHAPES[int(i)] for i in args.shapes.split(",")])
  use_torch = not args.no_torch
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)

  rows = []
  for shape in shapes:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (args.batch, shape.height, shape.width, shape.channels))
    kernel = jax.random.normal(keys[1], (shape.kernel_size, shape.kernel_size, 1,
                                         shape.channels))
    reference = depthwise.depthwise_conv(x, kernel, shape.stride, BASELINE)
    cotangent = jax.random.normal(keys[2], reference.shape)
    candidates = _jax_candidates(implementations, shape, x, kernel, cotangent)
    max_abs_diff = {name: float(jnp.max(jnp.abs(
        candidates[name]["forward"][0]() - reference))) for name in implementations}
    if use_torch:
      candidates[TORCH], torch_forward = _torch_candidate(shape, x, kernel, cotangent)
      max_abs_diff[TORCH] = float(np.max(np.abs(
          torch_forward().numpy().transpose(0, 2, 3, 1) - np.asarray(reference))))
    for pass_name in ("forward", "forward_backward"):
      calls = {name: passes[pass_name][0] for name, passes in candidates.items()}
      wall, cpu = _time_round_robin(calls, args.repeats, args.warmup)
      medians = {name: statistics.median(times) for name, times in wall.items()}
      for name in candidates:
        rows.append({
            "shape": shape.name, "batch": args.batch, **dataclasses.asdict(shape),
            "pass": pass_name, "implementation": name,
            "median_ms": medians[name], "min_ms": min(wall[name]),
            "cpu_median_ms": statistics.median(cpu[name]),
            "times_ms": wall[name],
            "compile_s": candidates[name][pass_name][1] if name != TORCH else None,
            "speedup_vs_grouped": medians[BASELINE] / medians[name],
            "speedup_vs_torch": medians[TORCH] / medians[name] if use_torch else None,
            "forward_max_abs_diff_vs_grouped": max_abs_diff[name],
        })
        _print_row(rows[-1])
  return {
      "benchmark": "depthwise_conv",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "config": {k: v for k, v in vars(args).items() if k != "output"},
      "environment": _environment(use_torch),
      "auto": {backend: depthwise.resolve_implementation("auto", backend)
               for backend in ("cpu", "gpu", "tpu")},
      "totals_ms": _totals(rows),
      "results": rows,
  }


def _totals(rows):
  """Sum of medians over the shapes, per pass and implementation."""
  totals = {}
  for row in rows:
    per_pass = totals.setdefault(row["pass"], {})
    per_pass[row["implementation"]] = per_pass.get(row["implementation"], 0.0) + row["median_ms"]
  return totals


def _environment(use_torch):
  env = {
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()], "python": platform.python_version(),
      "machine": platform.machine(), "cpu_count": os.cpu_count(),
      "load_average": os.getloadavg(),
  }
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
  return env


_HEADER = (f"{'shape':<18} {'pass':<16} {'implementation':<12} {'median ms':>10} "
           f"{'cpu ms':>9} {'compile s':>9} {'x grouped':>9} {'x torch':>8}")


def _print_row(row):
  if _print_row.first:
    print(_HEADER)
    _print_row.first = False
  compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.2f}"
  vs_torch = "" if row["speedup_vs_torch"] is None else f"{row['speedup_vs_torch']:.2f}"
  print(f"{row['shape']:<18} {row['pass']:<16} {row['implementation']:<12} "
        f"{row['median_ms']:>10.1f} {row['cpu_median_ms']:>9.1f} {compile_s:>9} "
        f"{row['speedup_vs_grouped']:>9.2f} {vs_torch:>8}", flush=True)


_print_row.first = True


def main(argv=None):
  args = _parse_args(argv)
  results = run(args)
  print("\nsum of medians over shapes (ms):")
  for pass_name, per_impl in results["totals_ms"].items():
    print(f"  {pass_name:<16} " + "  ".join(f"{k} {v:.1f}" for k, v in per_impl.items()))
  print(f"auto: {results['auto']}  load average: {results['environment']['load_average']}")
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results, indent=2) + "\n")
  print(f"wrote {output}")


if __name__ == "__main__":
  main()
