"""What int8 quantization costs, recipe by recipe: the measurements behind quantize.RECIPE.

Trains the models it measures on the digits demo (each in its own train.py process; a
finished workdir under --workdirs is reused), exports each to float32 ONNX at its training
size, quantizes it with each recipe (rap_flax.pytorch.quantize, the converter's own code, on
the same calibration images), and evaluates every graph with onnxruntime over the whole eval
split: top-1, top-1 agreement with float32, logit error and file size; then RECIPE with 1 to
30 calibration batches. MobileNetV3-large + SRAP at 224 with random weights adds the file sizes
at full scale.

  python benchmarks/int8_choices.py [--workdirs=DIR] [--models=demo,v1_32px,...]

No timing here (onnx_deploy.py measures latency), so it runs on a loaded machine too.
Writes benchmarks/results/int8_choices.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import harness
import onnx_deploy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from rap_flax import data, models, weights  # noqa: E402
from rap_flax.pytorch import onnx_export, quantize  # noqa: E402
from rap_flax.training import config_lib, evaluate  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "digits_srap.py")
# name -> train.py overrides of the demo config. The demo itself ends near 99% (a ceiling);
# the others stop early (the 32px ones at 84-88%), where a quantization error has room to
# show.
MODELS = {
    "demo": (),
    "demo_6_epochs": ("--config.num_epochs=6",),
    "v1_32px": ("--config.data.image_size=32", "--config.num_epochs=12"),
    "v3small_32px": ("--config.data.image_size=32", "--config.num_epochs=5",
                     "--config.model.arch=mobilenetv3_small",
                     "--config.model.width_multiplier=0.5"),
}
_EVERY_OP = None
_CONV_GEMM = ("Conv", "Gemm")
_BETWEEN = quantize.BETWEEN_OPS
_GATES = quantize.GATE_SCOPES
_CHOSEN = quantize.RECIPE
RECIPES = {
    "S8S8, Conv+Gemm": quantize.Recipe(_CONV_GEMM, activations="int8"),
    "S8S8, Conv+Gemm, no pre-processing": quantize.Recipe(_CONV_GEMM, activations="int8",
                                                          preprocess=False),
    "U8S8, Conv+Gemm": quantize.Recipe(_CONV_GEMM),
    "U8S8, Conv+Gemm, per-channel": quantize.Recipe(_CONV_GEMM, per_channel=True),
    "U8S8, Conv+Gemm+between ops, per-channel": quantize.Recipe(_CONV_GEMM + _BETWEEN,
                                                                per_channel=True),
    "chosen (quantize.RECIPE): the same, gates' between ops float": _CHOSEN,
    "chosen, per-tensor": dataclasses.replace(_CHOSEN, per_channel=False),
    "chosen, S8S8": dataclasses.replace(_CHOSEN, activations="int8"),
    "chosen, gates all float": dataclasses.replace(
        _CHOSEN, keep_float=tuple((scope, None) for scope in _GATES)),
    "chosen, classifier float": dataclasses.replace(
        _CHOSEN, keep_float=_CHOSEN.keep_float + (("/classifier/", None),)),
    "chosen + TopK": dataclasses.replace(_CHOSEN, op_types=_CHOSEN.op_types + ("TopK",)),
    "chosen + HardSwish": dataclasses.replace(_CHOSEN, op_types=_CHOSEN.op_types
                                              + ("HardSwish",)),
    "chosen + Sigmoid": dataclasses.replace(_CHOSEN, op_types=_CHOSEN.op_types + ("Sigmoid",)),
    "U8S8, every op, per-channel": quantize.Recipe(_EVERY_OP, per_channel=True),
}
CALIBRATION_SWEEP = (1, 3, 10, 30)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdirs", default=None,
                      help="where the trained workdirs live (reused when finished); default: "
                           "a temporary directory")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--calibration_batches", type=int, default=10)
  parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR, "int8_choices.json"))
  return parser.parse_args(argv)


def train(workdir: str, overrides) -> None:
  process = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--config={CONFIG}",
                            f"--workdir={workdir}", *overrides], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO})
  if process.returncode != 0:
    raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{process.stderr[-3000:]}")


def eval_images(config) -> np.ndarray:
  batches = data.create_eval_iterator(config.data, config.eval_batch_size)
  return np.concatenate([b["image"][b["mask"]] for b in batches]).transpose(0, 3, 1, 2)


def measure(config, path: str, reference: np.ndarray, images: np.ndarray) -> dict:
  """top1 (eval.py's), agreement (eval images whose top-1 class is float32's), logit_error
  (RMS difference from the float32 logits over their RMS spread across classes), size."""
  logits = quantize.logits(path, images)
  spread = np.sqrt(np.mean((reference - reference.mean(1, keepdims=True)) ** 2))
  return {"top1": evaluate.evaluate_onnx(config, path)["top1"],
          "agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
          "logit_error": float(np.sqrt(np.mean((logits - reference) ** 2)) / spread),
          "megabytes": os.path.getsize(path) / 1e6}


def measure_model(name: str, workdir: str, scratch: str, batches: int) -> dict:
  config = config_lib.recorded_config(workdir)
  model_spec = models.spec_from_config(config, data.num_classes(config.data))
  variables = weights.load_variables(workdir, model_spec)
  float_path = os.path.join(scratch, f"{name}_float32.onnx")
  onnx_export.export_for_run(variables, model_spec, float_path, config)
  images = eval_images(config)
  reference = quantize.logits(float_path, images)
  calibration = quantize.calibration_images(config.data, max(CALIBRATION_SWEEP))
  result = {"overrides": list(MODELS.get(name, ())), "eval_examples": len(images),
            "float32": measure(config, float_path, reference, images), "recipes": {},
            "calibration_batches": {}}
  print(f"{name}: float32 top-1 {100 * result['float32']['top1']:.2f}%", flush=True)
  path = os.path.join(scratch, f"{name}_int8.onnx")
  first = lambda count: calibration[:count * quantize.CALIBRATION_BATCH_SIZE]
  for recipe_name, recipe in RECIPES.items():
    quantize.quantize_static(float_path, path, first(batches), recipe)
    result["recipes"][recipe_name] = measure(config, path, reference, images)
    print(f"  {recipe_name}: {result['recipes'][recipe_name]}", flush=True)
  for count in CALIBRATION_SWEEP:
    quantize.quantize_static(float_path, path, first(count), quantize.RECIPE)
    result["calibration_batches"][count] = measure(config, path, reference, images)
    print(f"  RECIPE, {count} calibration batches: {result['calibration_batches'][count]}",
          flush=True)
  return result


def v3_large_sizes(scratch: str) -> dict:
  """File sizes of MobileNetV3-large + SRAP at 224 (random weights: the sizes only)."""
  import torch  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import models as torch_models  # pylint: disable=g-import-not-at-top

  config = onnx_deploy.v3_large_config()
  model_spec = models.spec_from_config(config, data.num_classes(config.data))
  torch.manual_seed(0)
  variables = weights.load_variables(torch_models.create_model(model_spec).state_dict(),
                                     model_spec)
  float_path = os.path.join(scratch, "v3large_float32.onnx")
  onnx_export.export_for_run(variables, model_spec, float_path, config)
  calibration = quantize.calibration_images(config.data, 2)
  float_megabytes = os.path.getsize(float_path) / 1e6
  sizes = {"overrides": list(onnx_deploy.V3_LARGE), "float32_megabytes": float_megabytes,
           "recipes": {}}
  for recipe_name, recipe in RECIPES.items():
    path = os.path.join(scratch, "v3large_int8.onnx")
    quantize.quantize_static(float_path, path, calibration, recipe)
    megabytes = os.path.getsize(path) / 1e6
    sizes["recipes"][recipe_name] = {"megabytes": megabytes, "ratio": megabytes / float_megabytes}
    print(f"  v3_large {recipe_name}: {megabytes:.2f} MB, {megabytes / float_megabytes:.3f}x",
          flush=True)
  return sizes


def main(argv=None) -> None:
  args = parse_args(argv)
  start = time.perf_counter()
  report = {"benchmark": "int8_choices", "config": os.path.relpath(CONFIG, REPO),
            "calibration_batches": args.calibration_batches,
            "recipes": {name: dataclasses.asdict(r) for name, r in RECIPES.items()},
            "default_recipe": dataclasses.asdict(quantize.RECIPE), "models": {}}
  with tempfile.TemporaryDirectory() as scratch:
    root = args.workdirs or scratch
    for name in args.models.split(","):
      workdir = os.path.join(root, name)
      train(workdir, MODELS[name])
      report["models"][name] = measure_model(name, workdir, scratch, args.calibration_batches)
    report["v3_large_224_random"] = v3_large_sizes(scratch)
  report["wall_s"] = time.perf_counter() - start
  harness.write_report(args.output, report)
  print("\n".join(readme_rows(report)))


def readme_rows(report: dict) -> list[str]:
  """The README's table: per recipe, top-1 / agreement / logit error per model, V3-large size."""
  def cell(measured: dict) -> str:
    return (f"{100 * measured['top1']:.2f}% / {100 * measured['agreement']:.1f}% / "
            f"{100 * measured['logit_error']:.1f}%")

  rows = []
  for name in RECIPES:
    cells = [cell(model["recipes"][name]) for model in report["models"].values()]
    sizes = report.get("v3_large_224_random", {}).get("recipes", {})
    ratio = f"{sizes[name]['ratio']:.3f}x" if name in sizes else ""
    rows.append(f"| {name} | {' | '.join(cells)} | {ratio} |")
  return rows


if __name__ == "__main__":
  main()
