"""Training-step throughput: rap_flax against the PyTorch model with the upstream layout.

Times the full step of the real training loop (`rap_flax.training.train_lib.make_train_step`:
forward, backward, SGD with momentum 0.9 and coupled weight decay 1e-4) and, in the same
run, torch's forward + backward + torch.optim.SGD step of `rap_flax.torch_models` with the
same model, batch and thread count. Prints both throughputs and the ratio; writes JSON.

  python benchmarks/train_step.py                      # CPU, 2 threads, float32
  python benchmarks/train_step.py --dtype=bfloat16 --baseline=none   # on a GPU

The thread count must be fixed before jax starts, so this script sets XLA_FLAGS itself.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", default="mobilenetv3_large")
  parser.add_argument("--attention", default="srap")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--num_classes", type=int, default=120)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per framework")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--threads", type=int, default=2, help="CPU threads for both frameworks")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--baseline", default="torch", choices=("torch", "none"),
                      help="torch: same-run PyTorch CPU baseline; none: Flax only (GPU)")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results",
                                                        "train_step.json"))
  return parser.parse_args()


def _median_seconds(step, warmup: int, steps: int) -> float:
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_flax(args) -> float:
  import jax
  import numpy as np
  from rap_flax.training import config_lib, optim, parallel, train_lib, train_state

  config = config_lib.base_config()
  config.model.arch, config.model.attention = args.arch, args.attention
  config.model.dtype = args.dtype
  mesh = parallel.create_mesh()
  model = train_state.create_model(config, args.num_classes)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 100, 10_000))
  state = train_state.create_train_state(model, tx, args.image_size, 0,
                                         parallel.replicated_sharding(mesh))
  rng = np.random.default_rng(0)
  batch = parallel.make_global_batch({
      "image": rng.uniform(size=(args.batch_size, args.image_size, args.image_size, 3))
               .astype(np.float32),
      "label": rng.integers(0, args.num_classes, args.batch_size).astype(np.int32),
      "mask": np.ones(args.batch_size, bool)}, parallel.data_sharding(mesh))
  train_step = train_lib.make_train_step(model, 0.0, mesh)
  holder = [state]

  def step():
    holder[0], metrics = train_step(holder[0], batch)
    jax.block_until_ready(metrics)
  return _median_seconds(step, args.warmup, args.steps)


def time_torch(args) -> float:
  import torch
  from rap_flax import torch_models

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = torch_models.create_model(args.arch, args.num_classes, args.attention).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
  labels = torch.randint(0, args.num_classes, (args.batch_size,))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
  return _median_seconds(step, args.warmup, args.steps)


def main():
  args = parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_cpu_multi_thread_eigen=true"
                             f" intra_op_parallelism_threads={args.threads}")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax

  results = {"arch": args.arch, "attention": args.attention, "batch_size": args.batch_size,
             "image_size": args.image_size, "dtype": args.dtype, "threads": args.threads,
             "backend": jax.default_backend(), "device": str(jax.devices()[0]),
             "machine": platform.processor() or platform.machine(),
             "jax_version": jax.__version__}
  flax_seconds = time_flax(args)
  results["flax_seconds_per_step"] = flax_seconds
  results["flax_images_per_second"] = args.batch_size / flax_seconds
  print(f"flax  ({results['backend']}, {args.dtype}): {flax_seconds * 1e3:8.1f} ms/step "
        f"{results['flax_images_per_second']:8.1f} images/s")
  if args.baseline == "torch":
    import torch
    torch_seconds = time_torch(args)
    results.update(torch_version=torch.__version__, torch_seconds_per_step=torch_seconds,
                   torch_images_per_second=args.batch_size / torch_seconds,
                   flax_over_torch=torch_seconds / flax_seconds)
    print(f"torch (cpu, float32):      {torch_seconds * 1e3:8.1f} ms/step "
          f"{results['torch_images_per_second']:8.1f} images/s")
    print(f"ratio flax/torch throughput: {results['flax_over_torch']:.2f}x")
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
