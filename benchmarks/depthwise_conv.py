"""Depthwise conv speed: every DepthwiseConv implementation vs the grouped conv and torch.

Times the forward pass and the forward + backward pass (output, input gradient and kernel
gradient for a fixed random output cotangent, as `y.backward(ct)` in torch) at the depthwise
shapes of MobileNetV3-large at 224. JAX and torch run in separate processes, rounds
alternating; inside the JAX process the implementations of one (shape, pass) are timed
round-robin. JAX functions are compiled before timing (compile seconds reported apart).

  python benchmarks/depthwise_conv.py [--implementations=grouped,shifted,shifted_vjp]

Refuses to start on a busy machine (see harness.py). Writes
benchmarks/results/depthwise_conv.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import harness

BASELINE = "grouped"
TORCH = "torch"
PASSES = ("forward", "forward_backward")


@dataclasses.dataclass(frozen=True)
class Shape:
  height: int
  width: int
  channels: int
  kernel_size: int
  stride: int

  @property
  def name(self) -> str:
    return f"{self.height}x{self.width}x{self.channels} k{self.kernel_size} s{self.stride}"


# MobileNetV3-large at 224: first bneck (16 ch), the stride-2 64-channel expansion, the
# 5x5 stride-2 layer, a 14x14 layer, the last 5x5 layer.
SHAPES = (
    Shape(112, 112, 16, 3, 1),
    Shape(112, 112, 64, 3, 2),
    Shape(56, 56, 72, 5, 2),
    Shape(14, 14, 480, 3, 1),
    Shape(7, 7, 960, 5, 1),
)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per candidate per round")
  parser.add_argument("--implementations", default="grouped,shifted,shifted_vjp",
                      help="comma-separated DepthwiseConv implementations")
  parser.add_argument("--baseline", default="torch", choices=("torch", "none"))
  parser.add_argument("--shapes", default="all", help="'all' or comma-separated indices into SHAPES")
  harness.add_common_flags(parser, "depthwise_conv.json")
  return parser.parse_args(argv)


def _shapes(args):
  return SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]


def _inputs(args, shape):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.standard_normal((args.batch, shape.height, shape.width, shape.channels), np.float32)
  kernel = rng.standard_normal((shape.kernel_size, shape.kernel_size, 1, shape.channels),
                               np.float32)
  out = (shape.height + 2 * (shape.kernel_size // 2) - shape.kernel_size) // shape.stride + 1
  cotangent = rng.standard_normal((args.batch, out, out, shape.channels), np.float32)
  return x, kernel, cotangent


def _median_ms(call, repeats: int) -> float:
  call()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def jax_worker(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rap_flax.layers import depthwise

  implementations = args.implementations.split(",")
  rows = []
  for shape in _shapes(args):
    x, kernel, cotangent = (jnp.asarray(a) for a in _inputs(args, shape))
    calls, compile_s, outputs = {}, {}, {}
    for name in implementations:
      forward = lambda x, k, name=name: depthwise.depthwise_conv(x, k, shape.stride, name)

      def forward_backward(x, k, ct, forward=forward):
        y, vjp = jax.vjp(forward, x, k)
        return (y,) + vjp(ct)

      for pass_name, fn, operands in (("forward", forward, (x, kernel)),
                                      ("forward_backward", forward_backward,
                                       (x, kernel, cotangent))):
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(*operands).compile()
        compile_s[name, pass_name] = time.perf_counter() - start
        calls[name, pass_name] = (lambda c=compiled, o=operands:
                                  jax.block_until_ready(c(*o)))
      outputs[name] = calls[name, "forward_backward"]()
    for pass_name in PASSES:
      for name in implementations:
        errors = [float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(b))))
                  for a, b in zip(outputs[name], outputs[implementations[0]])]
        rows.append({"shape": shape.name, "pass": pass_name, "implementation": name,
                     "ms": _median_ms(calls[name, pass_name], args.repeats),
                     "compile_s": compile_s[name, pass_name],
                     "max_relative_diff_vs_first": max(errors)})
  return {"rows": rows, "jax": jax.__version__, "backend": jax.default_backend()}


def torch_worker(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.threads)
  rows = []
  for shape in _shapes(args):
    # torch's native layouts: NCHW activations, (C, 1, kh, kw) depthwise weights.
    x, kernel, cotangent = _inputs(args, shape)
    x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    w_t = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    ct_t = torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy())
    conv = lambda x, w: F.conv2d(x, w, stride=shape.stride, padding=shape.kernel_size // 2,
                                 groups=shape.channels)

    def forward():
      with torch.no_grad():
        return conv(x_t, w_t)

    def forward_backward():
      x_g, w_g = x_t.detach().requires_grad_(), w_t.detach().requires_grad_()
      y = conv(x_g, w_g)
      return (y,) + torch.autograd.grad(y, (x_g, w_g), ct_t)

    for pass_name, call in (("forward", forward), ("forward_backward", forward_backward)):
      rows.append({"shape": shape.name, "pass": pass_name, "implementation": TORCH,
                   "ms": _median_ms(call, args.repeats)})
  return {"rows": rows, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def aggregate(args, rounds: dict) -> dict:
  """Per (shape, pass, implementation) and per (pass, implementation) summed over shapes:
  the median, min and max over rounds of each round's median time."""
  per_key: dict[tuple, list[float]] = {}
  compile_s: dict[tuple, list[float]] = {}
  for results in rounds.values():
    for result in results:
      totals: dict[tuple, float] = {}
      for row in result["rows"]:
        key = (row["shape"], row["pass"], row["implementation"])
        per_key.setdefault(key, []).append(row["ms"])
        if "compile_s" in row:
          compile_s.setdefault(key, []).append(row["compile_s"])
        total_key = (row["pass"], row["implementation"])
        totals[total_key] = totals.get(total_key, 0.0) + row["ms"]
      for key, value in totals.items():
        per_key.setdefault(("total",) + key, []).append(value)
  rows = []
  for (shape, pass_name, name), times in per_key.items():
    row = {"shape": shape, "pass": pass_name, "implementation": name,
           "ms": harness.summary(times)}
    if (shape, pass_name, name) in compile_s:
      row["compile_s"] = harness.summary(compile_s[shape, pass_name, name])
    baseline = per_key.get((shape, pass_name, BASELINE))
    if baseline:
      row["speedup_vs_grouped"] = statistics.median(baseline) / statistics.median(times)
    torch_times = per_key.get((shape, pass_name, TORCH))
    if torch_times:
      row["speedup_vs_torch"] = statistics.median(torch_times) / statistics.median(times)
    rows.append(row)
  return rows


def print_rows(rows) -> None:
  print(f"{'shape':<20} {'pass':<16} {'implementation':<12} {'median ms':>10} "
        f"{'[min-max]':>17} {'x grouped':>9} {'x torch':>8}")
  for row in rows:
    ms = row["ms"]
    print(f"{row['shape']:<20} {row['pass']:<16} {row['implementation']:<12} "
          f"{ms['median']:>10.1f} {ms['min']:>8.1f}-{ms['max']:<8.1f} "
          f"{row.get('speedup_vs_grouped', float('nan')):>9.2f} "
          f"{row.get('speedup_vs_torch', float('nan')):>8.2f}")


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    harness.pin_threads(args.threads)
    harness.worker_result(jax_worker(args) if args.worker == "jax" else torch_worker(args))
    return
  harness.check_idle(args.allow_loaded)
  load_before = harness.load_average()
  sides = ["jax"] + ([TORCH] if args.baseline == "torch" else [])
  forwarded = harness.forwarded_argv(argv)
  rounds = harness.alternate(sides, args.rounds,
                             lambda side: harness.run_worker(__file__, side, forwarded))
  rows = aggregate(args, rounds)
  print_rows(rows)
  versions = {k: v for results in rounds.values() for k, v in results[0].items() if k != "rows"}
  harness.write_report(args.output, {
      "benchmark": "depthwise_conv", "machine": harness.machine(args.threads),
      "versions": versions, "batch": args.batch, "rounds": args.rounds,
      "repeats_per_round": args.repeats, "load_before": load_before,
      "load_after": harness.load_average(), "results": rows,
      "per_round": rounds})


if __name__ == "__main__":
  main()
