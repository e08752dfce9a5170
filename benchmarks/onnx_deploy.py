"""Deployment, measured: file size and onnxruntime latency of the float32 and int8 ONNX graphs
(batch 1, 1 thread) beside the Flax model's own CPU latency, and the demo's accuracy on each.

Models: the digits demo (trained here with train.py, or --demo_workdir) and MobileNetV3-large
+ SRAP at 224 (the demo config with --config.model.arch=mobilenetv3_large, width 1, no CIFAR
stem, 224px; random weights from a .pth: size and speed only). The graphs are written by the
converter's command line (`python -m rap_flax.convert to-onnx [--quantize=int8]`) and the
accuracies are eval.py's, each command as a user runs it. Every latency side runs in its own
process pinned to one core, rounds alternating (harness.py); a round's figure is the median
of --iterations single-image runs after a warmup.

  python benchmarks/onnx_deploy.py [--demo_workdir=DIR] [--rounds=3]

Refuses to start on a busy machine (see harness.py). Writes benchmarks/results/onnx_deploy.json.
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
V3_LARGE = ("--config.model.arch=mobilenetv3_large", "--config.model.width_multiplier=1.0",
            "--config.model.cifar=False", "--config.data.image_size=224")
MODELS = ("demo", "v3large_224")
SIDES = ("flax", "float32", "int8", "int8_s8s8")
GRAPHS = SIDES[1:]
# int8_s8s8: the converter's recipe (quantize.RECIPE, uint8 activations) with int8
# activations instead (S8S8, onnxruntime's documented first choice): why U8S8 was chosen.
S8S8_RECIPE = "chosen, S8S8"


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--demo_workdir", default=None,
                      help="a finished demo workdir (default: train one in a temporary "
                           "directory, about 3 minutes)")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--iterations", type=int, default=200, help="timed runs per round")
  parser.add_argument("--warmup", type=int, default=20, help="untimed runs per round")
  parser.add_argument("--files", default=None, help=argparse.SUPPRESS)  # for the workers
  harness.add_common_flags(parser, "onnx_deploy.json")
  parser.set_defaults(threads=1)
  return parser.parse_args(argv)


def _run(command: list[str]) -> str:
  process = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO})
  if process.returncode != 0:
    raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}):\n"
                     f"{process.stderr[-3000:]}")
  return process.stdout.strip().splitlines()[-1]


def _time(run, args) -> dict:
  for _ in range(args.warmup):
    run()
  times = []
  for _ in range(args.iterations):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return {"latency_ms": 1e3 * sorted(times)[len(times) // 2]}


def flax_worker(args, model: str, entry: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rap_flax import data, models, weights  # pylint: disable=g-import-not-at-top

  config = _model_config(model, entry)
  flax_model = models.from_config(config, data.num_classes(config.data))
  variables = weights.load_variables(entry["weights"], flax_model)
  size = entry["image_size"]
  image = np.random.default_rng(0).uniform(size=(1, size, size, 3)).astype(np.float32)
  forward = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))
  return {**_time(lambda: jax.block_until_ready(forward(variables, image)), args),
          "backend": jax.default_backend(), "jax": jax.__version__}


def onnx_worker(args, path: str, size: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import onnxruntime  # pylint: disable=g-import-not-at-top

  options = onnxruntime.SessionOptions()
  options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  image = np.random.default_rng(0).uniform(size=(1, 3, size, size)).astype(np.float32)
  return {**_time(lambda: session.run(None, {"images": image}), args),
          "onnxruntime": onnxruntime.__version__}


def v3_large_config():
  """The demo config with the V3_LARGE overrides."""
  from rap_flax.training import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_recipe(CONFIG)
  config.model.update(arch="mobilenetv3_large", width_multiplier=1.0, cifar=False)
  config.data.image_size = 224
  return config


def _model_config(model: str, entry: dict):
  """The config of the run (demo: recorded in its workdir) or of the random V3-large."""
  from rap_flax.training import config_lib  # pylint: disable=g-import-not-at-top
  if model == "demo":
    return config_lib.recorded_config(entry["weights"])
  return v3_large_config()


def random_weights_worker(model: str, entry: dict) -> dict:
  """Writes a .pth (upstream layout) of the model with seeded random weights."""
  import torch  # pylint: disable=g-import-not-at-top
  from rap_flax import data, models, weights  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import models as torch_models  # pylint: disable=g-import-not-at-top

  config = _model_config(model, entry)
  model_spec = models.spec_from_config(config, data.num_classes(config.data))
  torch.manual_seed(0)
  state = torch_models.create_model(model_spec).state_dict()
  weights.save_state_dict(weights.load_variables(state, model_spec), model_spec,
                          entry["weights"])
  return {"weights": entry["weights"]}


def worker_main(args) -> None:
  harness.pin_threads(args.threads)
  side, model = args.worker.split(":")
  with open(args.files) as f:
    entry = json.load(f)[model]
  if side == "flax":
    result = flax_worker(args, model, entry)
  elif side == "random_weights":
    result = random_weights_worker(model, entry)
  else:
    result = onnx_worker(args, entry[side], entry["image_size"])
  harness.worker_result(result)


def prepare(args, scratch: str, files_path: str, forwarded: list[str]) -> dict:
  """Trains and exports what the sides time, writes `files_path` for the workers; returns
  {model: {weights, image_size, float32, int8 (paths), sizes, converter lines, accuracy}}."""
  files = {}
  for model in args.models.split(","):
    if model == "demo":
      workdir = args.demo_workdir or os.path.join(scratch, "demo")
      if not args.demo_workdir:
        _run([sys.executable, "train.py", f"--config={CONFIG}", f"--workdir={workdir}"])
      files[model] = {"weights": workdir, "source_flags": [f"--input={workdir}"],
                      "eval_flags": [f"--config={CONFIG}"]}
      files[model]["image_size"] = _model_config(model, files[model]).data.image_size
    else:
      pth = os.path.join(scratch, f"{model}_random.pth")
      flags = [f"--config={CONFIG}", *V3_LARGE]
      files[model] = {"weights": pth, "image_size": 224,
                      "source_flags": [f"--input={pth}", *flags], "eval_flags": flags}
      with open(files_path, "w") as f:
        json.dump(files, f)
      harness.run_worker(__file__, f"random_weights:{model}",
                         [*forwarded, f"--files={files_path}"])
    entry = files[model]
    for side, extra in (("float32", []), ("int8", ["--quantize=int8"])):
      path = os.path.join(scratch, f"{model}_{side}.onnx")
      entry[f"{side}_converter"] = _run([sys.executable, "-m", "rap_flax.convert", "to-onnx",
                                         *entry["source_flags"], f"--output={path}", *extra])
      entry[side] = path
    entry["int8_s8s8"] = os.path.join(scratch, f"{model}_int8_s8s8.onnx")
    _quantize_s8s8(model, entry)
    for side in GRAPHS:
      entry[f"{side}_megabytes"] = os.path.getsize(entry[side]) / 1e6
    if model == "demo":
      entry["accuracy"] = {side: _evaluate(entry.get(side, workdir), entry["eval_flags"],
                                           scratch, side) for side in SIDES}
  with open(files_path, "w") as f:
    json.dump(files, f)
  return files


def _quantize_s8s8(model: str, entry: dict) -> None:
  from int8_choices import RECIPES  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import quantize  # pylint: disable=g-import-not-at-top
  data_config = _model_config(model, entry).data
  quantize.quantize(entry["float32"], entry["int8_s8s8"], data_config, 10,
                    recipe=RECIPES[S8S8_RECIPE])


def _evaluate(weights: str, flags: list[str], scratch: str, side: str) -> dict:
  output = os.path.join(scratch, f"eval_{side}.json")
  _run([sys.executable, "eval.py", *flags, f"--weights={weights}", f"--output={output}"])
  with open(output) as f:
    return json.load(f)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    worker_main(args)
    return
  harness.check_idle(args.allow_loaded)
  load_before = harness.load_average()
  forwarded = harness.forwarded_argv(argv, "--files")
  report = {"benchmark": "onnx_deploy", "machine": harness.machine(args.threads),
            "load_before": load_before, "rounds": args.rounds,
            "iterations": args.iterations, "models": {}}
  with tempfile.TemporaryDirectory() as scratch:
    files_path = os.path.join(scratch, "files.json")
    files = prepare(args, scratch, files_path, forwarded)
    for model, entry in files.items():
      rounds = harness.alternate(
          SIDES, args.rounds, lambda side, model=model: harness.run_worker(
              __file__, f"{side}:{model}", [*forwarded, f"--files={files_path}"]))
      result = {"image_size": entry["image_size"],
                "megabytes": {s: entry[f"{s}_megabytes"] for s in GRAPHS},
                "converter": {s: entry[f"{s}_converter"] for s in ("float32", "int8")},
                "int8_s8s8_recipe": S8S8_RECIPE}
      result["megabytes"]["int8_over_float32"] = (entry["int8_megabytes"]
                                                  / entry["float32_megabytes"])
      for side, results in rounds.items():
        result[side] = {"latency_ms": harness.summary([r["latency_ms"] for r in results]),
                        "per_round": results}
      for side in ("int8", "int8_s8s8"):
        result[f"{side}_speedup_over_float32"] = harness.ratio(result["float32"]["latency_ms"],
                                                               result[side]["latency_ms"])
      if "accuracy" in entry:
        result["accuracy"] = {side: {k: entry["accuracy"][side][k]
                                     for k in ("top1", "top5", "loss", "num_examples")}
                              for side in SIDES}
      report["models"][model] = result
      print_model(model, result)
  report["load_after"] = harness.load_average()
  harness.write_report(args.output, report)
  print("\n".join(readme_rows(report)))


def readme_rows(report: dict) -> list[str]:
  """The README's table: per model and graph, size, latency and top-1."""
  def latency(result: dict) -> str:
    ms = result["latency_ms"]
    return f"{ms['median']:.2f} ms [{ms['min']:.2f}-{ms['max']:.2f}]"

  rows = []
  for model, result in report["models"].items():
    accuracy = result.get("accuracy", {})
    flax = latency(result["flax"])
    if accuracy:
      flax += f", top-1 {100 * accuracy['flax']['top1']:.2f}%"
    for side in GRAPHS:
      top1 = f"{100 * accuracy[side]['top1']:.2f}%" if accuracy else "(random weights)"
      rows.append(f"| {model} {result['image_size']}px, {side} | "
                  f"{result['megabytes'][side]:.2f} MB | {latency(result[side])} | "
                  f"{flax if side == 'float32' else ''} | {top1} |")
  return rows


def print_model(model: str, result: dict) -> None:
  sizes = result["megabytes"]
  line = [f"{model} ({result['image_size']}px): float32 {sizes['float32']:.2f} MB, int8 "
          f"{sizes['int8']:.2f} MB ({sizes['int8_over_float32']:.2f}x)"]
  for side in SIDES:
    latency = result[side]["latency_ms"]
    line.append(f"{side} {latency['median']:.2f} ms [{latency['min']:.2f}-{latency['max']:.2f}]")
  if "accuracy" in result:
    line.append("top-1 " + " / ".join(f"{side} {100 * result['accuracy'][side]['top1']:.2f}%"
                                      for side in SIDES))
  print("; ".join(line), flush=True)


if __name__ == "__main__":
  main()
