"""The GPU benchmark suite: one command, one GPU, at most ~8 minutes including compiles.

Measures, each framework in its own process:
  1. depthwise convolution forward + backward at the MobileNetV3-large shapes (batch 256), in
     bfloat16 and float32, for every DepthwiseConv implementation, with cuDNN (torch) beside
     -> results/gpu_depthwise.json;
  2. the training step (forward, backward, SGD) at batch 256, 224x224, bfloat16 compute with
     float32 parameters, of MobileNetV3-large + SRAP (avg,std), MobileNetV1 + MAFC and
     MobileNetV2 + SRAP: rap_flax vs the repo's PyTorch model (upstream layout) in eager AMP
     (bfloat16 autocast) with channels_last, and vs torch.compile of it; images/s, step time,
     peak memory, compile time; plus XLA's cost analysis of the Flax step (flops, bytes
     accessed) as achieved fractions of the card's HBM bandwidth and bfloat16 peak; and, as
     the reference PyTorch users pick, timm's `mobilenetv3_large_100` (its own SE gates)
     trained the same way, eager and compiled (skipped, with the reason, where timm is absent)
     -> results/gpu_train_step.json.
A part that fails records its error (the last lines of its stderr) and the others still run.
`--smoke` runs all of it at tiny sizes on the CPU (the test suite does, so it cannot rot; it
also runs it with tensorflow unimportable, as on the GPU machine).

On the lent GPU machine (jax, flax, optax, orbax, torch present; no tensorflow, clu or
ml_collections), carry the wheels it lacks: ml-collections and clu (pure Python) and wrapt,
which clu imports (a cp312 wheel). Here, in the repository root:
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl \\
        ml-collections==1.1.0 clu==0.0.12 wrapt==2.5.2
and there (carry .whl):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_suite.py --output_dir=$OUT
Nothing it imports needs tensorflow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import harness

# (name, arch, attention, pool types): the training-step cases; the first is the headline.
CASES = (("v3_large_srap", "mobilenetv3_large", "srap", ("avg", "std")),
         ("v1_mafc", "mobilenetv1", "mafc", ("avg", "std")),
         ("v2_srap", "mobilenetv2", "srap", ("avg", "std")))
SIDES = ("flax", "torch_eager", "torch_compile")
# timm's MobileNetV3-large, beside the headline case only.
TIMM_MODEL, TIMM_SIDES = "mobilenetv3_large_100", ("timm_eager", "timm_compile")
# MobileNetV3-large's depthwise layers at 224 (input size, channels, kernel, stride).
DEPTHWISE_SHAPES = ((112, 16, 3, 1), (112, 64, 3, 2), (56, 72, 3, 1), (56, 72, 5, 2),
                    (28, 120, 5, 1), (28, 240, 3, 2), (14, 480, 3, 1), (14, 672, 5, 2),
                    (7, 960, 5, 1))
# Dense bf16 tensor-core peak and HBM bandwidth from NVIDIA's data sheets (H100 SXM5 80GB,
# H100 PCIe, H200 SXM), matched against the device name.
CARDS = {"H200": (989e12, 4.8e12), "H100 PCIe": (756e12, 2.0e12), "H100": (989e12, 3.35e12)}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes on the CPU: checks the whole suite end to end")
  parser.add_argument("--cases", default=",".join(name for name, *_ in CASES))
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None, help="timed steps per side")
  parser.add_argument("--output_dir", default=harness.RESULTS_DIR)
  parser.add_argument("--depthwise_implementation", default=None,
                      help="of the Flax train step: auto (the measured default per backend; "
                      "grouped with --smoke, the fastest to compile) or one of "
                      "grouped|shifted|shifted_vjp")
  parser.add_argument("--allow_loaded", action="store_true")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.batch_size = args.batch_size or (2 if args.smoke else 256)
  args.steps = args.steps or (2 if args.smoke else 20)
  args.image_size = 64 if args.smoke else 224
  args.depthwise_implementation = args.depthwise_implementation or (
      "grouped" if args.smoke else "auto")
  args.width = 0.25 if args.smoke else 1.0
  return args


def _peaks(device_name: str) -> tuple[float, float] | tuple[None, None]:
  for key, peaks in CARDS.items():
    if key in device_name:
      return peaks
  return None, None


def _time(call, steps: int) -> tuple[float, float]:
  """(seconds of the first call, median seconds of `steps` more)."""
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


# ----------------------------------------------------------------------------- workers


def flax_step_worker(args, arch: str, attention: str, pool_types) -> dict:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rap_flax.data import DatasetInfo  # pylint: disable=g-import-not-at-top
  from rap_flax.training import config_lib, parallel, program as program_lib

  config = config_lib.base_config()
  config.model.arch, config.model.attention = arch, attention
  config.model.pool_types, config.model.width_multiplier = pool_types, args.width
  config.model.dtype = "bfloat16"
  config.model.depthwise_implementation = args.depthwise_implementation
  size, batch_size = args.image_size, args.batch_size
  mesh = parallel.create_mesh()
  program = program_lib.build(config, mesh, DatasetInfo(
      "synthetic", 1000, num_train=100 * batch_size, num_eval=batch_size, image_size=size))
  state = program.initial_state()
  rng = np.random.default_rng(0)
  batch = parallel.make_global_batch({
      "image": rng.uniform(size=(batch_size, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, 1000, batch_size).astype(np.int32),
      "mask": np.ones(batch_size, bool)}, parallel.data_sharding(mesh))
  step = program.train_step
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)

  first, step_s = _time(run, args.steps)
  device = jax.devices()[0]
  memory = device.memory_stats() or {}
  result = {"device": device.device_kind, "step_s": step_s, "first_step_s": first,
            "compile_s": compile_s, "images_per_second": batch_size / step_s,
            "peak_memory_bytes": memory.get("peak_bytes_in_use"),
            "flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed"),
            "depthwise_implementation": args.depthwise_implementation, "jax": jax.__version__}
  peak_flops, bandwidth = _peaks(device.device_kind)
  if peak_flops and result["flops"]:
    result["bf16_peak_fraction"] = result["flops"] / step_s / peak_flops
    result["hbm_bandwidth_fraction"] = result["bytes_accessed"] / step_s / bandwidth
  return result


def torch_step_worker(args, arch: str, attention: str, pool_types, compiled: bool) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from rap_flax import spec  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import models as torch_models  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_models.create_model(
      spec.ModelSpec(arch, 1000, attention, pool_types, width_multiplier=args.width))
  return _time_torch_training(args, model, compiled)


def timm_step_worker(args, compiled: bool) -> dict:
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("timm") is None:
    return {"skipped": "timm is not installed (pip install timm)"}
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = timm.create_model(TIMM_MODEL, num_classes=1000, pretrained=False)
  return {"model": TIMM_MODEL, "timm": timm.__version__,
          **_time_torch_training(args, model, compiled)}


def _time_torch_training(args, model, compiled: bool) -> dict:
  """The upstream recipe's step (SGD, bfloat16 autocast, channels_last) on `model`."""
  import torch  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  model = model.to(device).to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  size = args.image_size
  images = torch.rand(args.batch_size, 3, size, size, device=device).contiguous(
      memory_format=torch.channels_last)
  labels = torch.randint(0, 1000, (args.batch_size,), device=device)
  # The CPU smoke run checks the plumbing; inductor's C++ build would dominate it.
  forward = torch.compile(model, backend="eager" if args.smoke else "inductor") if (
      compiled) else model

  def run():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16):
      loss = torch.nn.functional.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    if device == "cuda":
      torch.cuda.synchronize()

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  first, step_s = _time(run, args.steps)
  return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "step_s": step_s, "first_step_s": first, "compile_s": first - step_s,
          "images_per_second": args.batch_size / step_s,
          "peak_memory_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
          "torch": torch.__version__}


def _depthwise_shapes(args):
  return ((16, 8, 3, 1), (16, 8, 5, 2)) if args.smoke else DEPTHWISE_SHAPES


def depthwise_jax_worker(args) -> dict:
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rap_flax.layers import depthwise  # pylint: disable=g-import-not-at-top

  rows = []
  for size, channels, kernel_size, stride in _depthwise_shapes(args):
    for dtype in ("bfloat16", "float32"):
      keys = jax.random.split(jax.random.key(0), 2)
      x = jax.random.normal(keys[0], (args.batch_size, size, size, channels), dtype)
      kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 1, channels), dtype)
      for name in depthwise.IMPLEMENTATIONS:
        def loss(x, kernel, name=name):
          y = depthwise.depthwise_conv(x, kernel, stride, name)
          return jnp.sum(y.astype(jnp.float32) ** 2)
        start = time.perf_counter()
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile()
        compile_s = time.perf_counter() - start
        _, seconds = _time(lambda: jax.block_until_ready(compiled(x, kernel)), args.steps)
        rows.append({"shape": f"{size}x{size}x{channels} k{kernel_size} s{stride}",
                     "dtype": dtype, "implementation": name, "ms": 1e3 * seconds,
                     "compile_s": compile_s})
  return {"device": jax.devices()[0].device_kind, "rows": rows}


def depthwise_torch_worker(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  device = "cuda" if torch.cuda.is_available() else "cpu"
  rows = []
  for size, channels, kernel_size, stride in _depthwise_shapes(args):
    for dtype in ("bfloat16", "float32"):
      x = torch.randn(args.batch_size, channels, size, size, device=device,
                      dtype=getattr(torch, dtype)).contiguous(memory_format=torch.channels_last)
      weight = torch.randn(channels, 1, kernel_size, kernel_size, device=device,
                           dtype=getattr(torch, dtype))

      def run():
        x_g, w_g = x.detach().requires_grad_(), weight.detach().requires_grad_()
        y = torch.nn.functional.conv2d(x_g, w_g, stride=stride, padding=kernel_size // 2,
                                       groups=channels)
        (y.float() ** 2).sum().backward()
        if device == "cuda":
          torch.cuda.synchronize()

      _, seconds = _time(run, args.steps)
      rows.append({"shape": f"{size}x{size}x{channels} k{kernel_size} s{stride}",
                   "dtype": dtype, "implementation": "torch", "ms": 1e3 * seconds})
  return {"rows": rows}


def worker_main(args) -> None:
  kind, _, case_name = args.worker.partition(":")
  if kind == "depthwise_jax":
    result = depthwise_jax_worker(args)
  elif kind == "depthwise_torch":
    result = depthwise_torch_worker(args)
  elif kind in TIMM_SIDES:
    result = timm_step_worker(args, kind == "timm_compile")
  else:
    _, arch, attention, pool_types = next(c for c in CASES if c[0] == case_name)
    result = (flax_step_worker(args, arch, attention, pool_types) if kind == "flax" else
              torch_step_worker(args, arch, attention, pool_types, kind == "torch_compile"))
  harness.worker_result(result)


def _run_part(worker: str, forwarded: list[str]) -> dict:
  """One worker's result, or {"error": ...} when it failed: the other parts still run."""
  try:
    return harness.run_worker(__file__, worker, forwarded)
  except SystemExit as failure:
    message = str(failure).strip()
    print(f"{worker}: FAILED, {message.splitlines()[-1] if message else 'no output'}",
          file=sys.stderr, flush=True)
    return {"error": message[-2000:]}


def _ratio(numerator: dict, denominator: dict) -> float | None:
  """Images/s of one side over another's; None where either part failed or was skipped."""
  if numerator.get("images_per_second") and denominator.get("images_per_second"):
    return numerator["images_per_second"] / denominator["images_per_second"]
  return None


def _summary(side: str, result: dict) -> str:
  if "images_per_second" not in result:
    return f"{side}: " + ("skipped, " + result["skipped"] if "skipped" in result else "failed")
  return (f"{side}: {result['images_per_second']:.1f} images/s "
          f"({1e3 * result['step_s']:.1f} ms/step, first step {result['first_step_s']:.1f} s)")


# ----------------------------------------------------------------------------- parent


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    worker_main(args)
    return
  harness.check_idle(args.allow_loaded or args.smoke)
  forwarded = harness.forwarded_argv(argv)
  start = time.perf_counter()
  run = lambda worker: _run_part(worker, forwarded)

  depthwise = {"jax": run("depthwise_jax"), "torch": run("depthwise_torch")}
  torch_ms = {(r["shape"], r["dtype"]): r["ms"] for r in depthwise["torch"].get("rows", [])}
  for row in depthwise["jax"].get("rows", []):
    if (row["shape"], row["dtype"]) in torch_ms:
      row["speedup_vs_torch"] = torch_ms[row["shape"], row["dtype"]] / row["ms"]
  harness.write_report(os.path.join(args.output_dir, "gpu_depthwise.json"), {
      "benchmark": "gpu_depthwise", "device": depthwise["jax"].get("device"),
      "batch_size": args.batch_size, "smoke": args.smoke,
      "rows": depthwise["jax"].get("rows", []) + depthwise["torch"].get("rows", []),
      "errors": {side: part["error"] for side, part in depthwise.items() if "error" in part}})

  cases = []
  for index, name in enumerate(args.cases.split(",")):
    case = {"case": name, "batch_size": args.batch_size, "image_size": args.image_size}
    for side in SIDES + (TIMM_SIDES if index == 0 else ()):
      case[side] = run(f"{side}:{name}")
      print(f"{name} {_summary(side, case[side])}", flush=True)
    case["flax_over_torch_eager"] = _ratio(case["flax"], case["torch_eager"])
    case["flax_over_torch_compile"] = _ratio(case["flax"], case["torch_compile"])
    cases.append(case)
  headline = cases[0]
  flax = headline["flax"]
  harness.write_report(os.path.join(args.output_dir, "gpu_train_step.json"), {
      "benchmark": "gpu_train_step",
      "device": flax.get("device") or headline["torch_eager"].get("device"),
      "smoke": args.smoke, "case": headline["case"], "batch_size": args.batch_size,
      **{f"{side}_images_per_second": headline[side].get("images_per_second")
         for side in SIDES + TIMM_SIDES},
      "hbm_bandwidth_fraction": flax.get("hbm_bandwidth_fraction"),
      "bf16_peak_fraction": flax.get("bf16_peak_fraction"),
      "suite_seconds": time.perf_counter() - start, "cases": cases})


if __name__ == "__main__":
  main()
