"""Training-step throughput: rap_flax against the PyTorch model with the upstream layout.

Flax side: the real training step (`rap_flax.training.program`, as train.py builds it: forward,
backward, SGD with momentum 0.9 and coupled weight decay 1e-4). PyTorch side: forward +
backward + torch.optim.SGD of `rap_flax.pytorch.models` (the upstream state-dict layout, NCHW),
same model, batch and thread count. Each side runs in its own process, rounds alternate
(flax, torch, torch, flax, ...), and each round is a fresh process: the Flax compile is cold
every round and reported as `compile_overhead_s` (first step minus a steady step).

  python benchmarks/train_step.py                              # V3-large + SRAP, CPU, 2 threads
  python benchmarks/train_step.py --arch=mobilenetv3_large,mobilenetv1,mobilenetv2

Refuses to start on a busy machine (see harness.py). Writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import harness

SIDES = ("flax", "torch")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", default="mobilenetv3_large",
                      help="comma-separated architectures, one case each")
  parser.add_argument("--attention", default="srap")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--num_classes", type=int, default=120)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--depthwise_implementation", default="auto")
  parser.add_argument("--baseline", default="torch", choices=("torch", "none"),
                      help="none: Flax only")
  harness.add_common_flags(parser, "train_step.json")
  return parser.parse_args(argv)


def _time_steps(step, first_steps: int, steps: int) -> dict:
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  for _ in range(first_steps):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  steady = statistics.median(times)
  return {"first_step_s": first, "step_s": steady, "step_times_s": times,
          "compile_overhead_s": first - steady}


def flax_worker(args, arch: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rap_flax.data import DatasetInfo  # pylint: disable=g-import-not-at-top
  from rap_flax.training import config_lib, parallel, program as program_lib

  config = config_lib.base_config()
  config.model.arch, config.model.attention, config.model.dtype = arch, args.attention, args.dtype
  config.model.depthwise_implementation = args.depthwise_implementation
  mesh = parallel.create_mesh()
  info = DatasetInfo("synthetic", args.num_classes, num_train=100 * args.batch_size,
                     num_eval=args.batch_size, image_size=args.image_size)
  program = program_lib.build(config, mesh, info)
  state = program.initial_state()
  rng = np.random.default_rng(0)
  size = args.image_size
  batch = parallel.make_global_batch({
      "image": rng.uniform(size=(args.batch_size, size, size, 3)).astype(np.float32),
      "label": rng.integers(0, args.num_classes, args.batch_size).astype(np.int32),
      "mask": np.ones(args.batch_size, bool)}, parallel.data_sharding(mesh))
  train_step = program.train_step
  holder = [state]

  def step():
    holder[0], metrics = train_step(holder[0], batch)
    jax.block_until_ready(metrics)

  result = _time_steps(step, args.warmup, args.steps)
  return {**result, "backend": jax.default_backend(), "device": str(jax.devices()[0]),
          "jax": jax.__version__}


def torch_worker(args, arch: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import models as torch_models

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = torch_models.create_model(arch, args.num_classes, args.attention).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
  labels = torch.randint(0, args.num_classes, (args.batch_size,))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()

  return {**_time_steps(step, args.warmup, args.steps), "torch": torch.__version__,
          "torch_threads": torch.get_num_threads()}


def worker_main(args) -> None:
  harness.pin_threads(args.threads)
  side, arch = args.worker.split(":")
  run = flax_worker if side == "flax" else torch_worker
  harness.worker_result(run(args, arch))


def case_report(args, arch: str, rounds: dict) -> dict:
  case = {"arch": arch, "attention": args.attention, "batch_size": args.batch_size,
          "image_size": args.image_size, "dtype": args.dtype,
          "depthwise_implementation": args.depthwise_implementation}
  for side, results in rounds.items():
    case[side] = {"step_s": harness.summary([r["step_s"] for r in results]),
                  "images_per_s": args.batch_size / statistics.median(
                      r["step_s"] for r in results),
                  "compile_overhead_s": harness.summary(
                      [r["compile_overhead_s"] for r in results]),
                  "per_round": results}
  if "torch" in rounds:
    # Throughput ratio: torch seconds per step over flax seconds per step.
    case["flax_over_torch"] = harness.ratio(case["torch"]["step_s"], case["flax"]["step_s"])
  return case


def print_case(case: dict) -> None:
  flax = case["flax"]
  line = (f"{case['arch']} + {case['attention']}, batch {case['batch_size']}, "
          f"{case['image_size']}px: flax {1e3 * flax['step_s']['median']:.0f} ms/step "
          f"[{1e3 * flax['step_s']['min']:.0f}-{1e3 * flax['step_s']['max']:.0f}], compile "
          f"overhead {flax['compile_overhead_s']['median']:.1f} s")
  if "torch" in case:
    torch_step, ratio = case["torch"]["step_s"], case["flax_over_torch"]
    line += (f"; torch {1e3 * torch_step['median']:.0f} ms/step "
             f"[{1e3 * torch_step['min']:.0f}-{1e3 * torch_step['max']:.0f}]; flax/torch "
             f"{ratio['median']:.2f}x [{ratio['min']:.2f}-{ratio['max']:.2f}]")
  print(line, flush=True)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    worker_main(args)
    return
  harness.check_idle(args.allow_loaded)
  load_before = harness.load_average()
  sides = SIDES if args.baseline == "torch" else SIDES[:1]
  forwarded = harness.forwarded_argv(argv)
  cases = []
  for arch in args.arch.split(","):
    rounds = harness.alternate(
        sides, args.rounds,
        lambda side, arch=arch: harness.run_worker(__file__, f"{side}:{arch}", forwarded))
    cases.append(case_report(args, arch, rounds))
    print_case(cases[-1])
  harness.write_report(args.output, {
      "benchmark": "train_step", "machine": harness.machine(args.threads),
      "load_before": load_before, "load_after": harness.load_average(),
      "rounds": args.rounds, "steps_per_round": args.steps, "cases": cases})


if __name__ == "__main__":
  main()
