"""int8 ONNX: `convert to-onnx --quantize=int8`, its calibration, and eval.py on ONNX graphs."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rap_flax import data
from rap_flax.training import config_lib, evaluate
from tests import golden
from tests.test_convert import _config_for, run_cli
from tests.test_train import DIGITS, REPO, TINY, jax_cache, run_train, subprocess_env  # noqa: F401

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from rap_flax.pytorch import quantize  # noqa: E402  pylint: disable=g-import-not-at-top

# The demo with SRAP for 6 epochs (132 steps): about 90% validation top-1, enough for a wrong
# top-1 or a collapse to show (the first epochs sit at chance while BatchNorm settles).
SRAP_RUN = ("--config.model.attention=srap", "--config.batch_size=64", "--config.num_epochs=6")
# int8 top-1 vs the checkpoint's on that model. Its BatchNorm statistics have not settled at 6
# epochs, so its quantization loss follows the trajectory (2.8 points measured on today's,
# under the tests' unoptimised XLA); a collapse costs tens of points. The 1-point claim is the
# converged demo's (benchmarks/onnx_deploy.py).
INT8_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def trained(tmp_path_factory, jax_cache):  # noqa: F811
  workdir = tmp_path_factory.mktemp("trained_srap")
  run_train(jax_cache, workdir, *SRAP_RUN)
  return workdir


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
  """{"float32": path, "int8": path, "int8_stdout": the converter's line}, from the CLI."""
  directory = tmp_path_factory.mktemp("exported")
  paths = {}
  for side, extra in (("float32", ()), ("int8", ("--quantize=int8",))):
    paths[side] = directory / f"model_{side}.onnx"
    result = run_cli("to-onnx", f"--input={trained}", f"--output={paths[side]}", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    paths[f"{side}_stdout"] = result.stdout
  return paths


def eval_images(config, count: int):
  batch = next(data.create_eval_iterator(config.data, count))
  return batch["image"].transpose(0, 3, 1, 2), batch["label"]


def logits(path, images):
  (output,) = ort.InferenceSession(str(path)).run(None, {"images": images})
  return output


@pytest.mark.slow
def test_int8_export_runs_and_keeps_the_float32_top1(trained, exported):
  assert re.search(r"16px, int8: [\d.]+ MB = 0\.\d\dx float32; calibrated on 320 digits train "
                   r"images; float32's top-1 kept on \d+% of 32 validation images",
                   exported["int8_stdout"])
  graph = onnx.load(str(exported["int8"])).graph
  int8_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
  producers = {out: node for node in graph.node for out in node.output}
  convs = [node for node in graph.node if node.op_type == "Conv"]
  assert len(convs) == 41  # every conv of the model, each on dequantized int8 weights
  assert all(producers[c.input[1]].op_type == "DequantizeLinear"
             and producers[c.input[1]].input[0] in int8_weights for c in convs)
  config = config_lib.recorded_config(str(trained))
  images, labels = eval_images(config, 112)
  reference, quantized = logits(exported["float32"], images), logits(exported["int8"], images)
  assert np.mean(reference.argmax(1) == labels) > 0.8  # a model whose top-1 can be kept
  assert np.mean(quantized.argmax(1) == reference.argmax(1)) >= 0.95


def run_eval_cli(jax_cache, output, *args):  # noqa: F811
  result = subprocess.run(
      [sys.executable, str(REPO / "eval.py"), f"--config={DIGITS}", *TINY, *SRAP_RUN,
       f"--output={output}", *args],
      cwd=REPO, capture_output=True, text=True, env=subprocess_env(jax_cache), timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stdout, json.loads(output.read_text())


@pytest.mark.slow
def test_eval_py_evaluates_onnx_graphs_like_the_checkpoint(trained, exported, tmp_path,
                                                          jax_cache):  # noqa: F811
  _, flax = run_eval_cli(jax_cache, tmp_path / "flax.json", f"--workdir={trained}")
  _, float32 = run_eval_cli(jax_cache, tmp_path / "float32.json",
                            f"--weights={exported['float32']}")
  stdout, int8 = run_eval_cli(jax_cache, tmp_path / "int8.json",
                              f"--weights={exported['int8']}")
  assert re.fullmatch(r"top1=\d+\.\d\d% top5=\d+\.\d\d% loss=\d+\.\d{4} examples=360",
                      stdout.splitlines()[0])
  assert set(float32) == set(int8) == set(flax)
  assert float32["num_examples"] == int8["num_examples"] == flax["num_examples"] == 360
  assert (float32["top1"], float32["top5"]) == (flax["top1"], flax["top5"])
  assert float32["loss"] == pytest.approx(flax["loss"], abs=1e-4)
  assert abs(int8["top1"] - flax["top1"]) <= INT8_TOLERANCE
  assert int8["source"] == str(exported["int8"]) and int8["step"] is None


@pytest.mark.slow
def test_a_miscalibrated_int8_graph_collapses_and_is_refused(trained, exported, tmp_path,
                                                              monkeypatch):
  """Calibration images in 0-255 instead of the graph's 0-1: the ranges are 255 times too
  wide and the int8 graph's top-1 collapses; the export's check on validation images (read
  apart from the calibration images) refuses it."""
  config = config_lib.recorded_config(str(trained))
  real = quantize.calibration_images
  monkeypatch.setattr(quantize, "calibration_images",
                      lambda *args, **kwargs: 255 * real(*args, **kwargs))
  output = tmp_path / "miscalibrated.onnx"
  with pytest.raises(quantize.QuantizationError, match="nothing written"):
    quantize.quantize(str(exported["float32"]), str(output), config.data, 10)
  assert not output.exists()
  # Without the check, that graph would be written and would be wrong:
  images = quantize.calibration_images(config.data, 10)
  quantize.quantize_static(str(exported["float32"]), str(output), images, quantize.RECIPE)
  assert evaluate.evaluate_onnx(config, str(output))["top1"] < 0.5
  assert evaluate.evaluate_onnx(config, str(exported["int8"]))["top1"] > 0.8


def test_calibration_images_are_the_first_train_images_without_augmentation():
  from rap_flax.data import digits  # pylint: disable=g-import-not-at-top
  config = config_lib.load_recipe(str(DIGITS))
  images = quantize.calibration_images(config.data, 2)
  train_images = digits._load(16)[0]  # pylint: disable=protected-access
  np.testing.assert_array_equal(images, np.repeat(train_images[:64, None], 3, axis=1))
  np.testing.assert_array_equal(images, quantize.calibration_images(config.data, 2))


def test_quantize_without_the_run_config_is_refused(tmp_path):
  """A converter directory records its model, not its data: nothing to calibrate on."""
  name = "srap_v1_w025_cifar"
  orbax_dir = tmp_path / "orbax"
  from rap_flax import convert  # pylint: disable=g-import-not-at-top
  convert.convert("to-flax", str(golden.checkpoint_path(name)), str(orbax_dir),
                  config=_config_for(golden.case(name)))
  output = tmp_path / "model_int8.onnx"
  result = run_cli("to-onnx", f"--input={orbax_dir}", f"--output={output}", "--quantize=int8")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "calibrates on the run's training images: pass the --config" in result.stderr
  assert not output.exists()


def test_eval_of_an_onnx_graph_at_another_image_size_is_refused(tmp_path, jax_cache):  # noqa: F811
  from rap_flax import weights  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import onnx_export  # pylint: disable=g-import-not-at-top
  name = "srap_v1_w025_cifar"
  model = golden.build_model(golden.case(name))
  path = tmp_path / "model32.onnx"
  onnx_export.export(weights.load_variables(str(golden.checkpoint_path(name)), model),
                     model.model_spec, str(path), image_size=32)
  result = subprocess.run(
      [sys.executable, str(REPO / "eval.py"), f"--config={DIGITS}", f"--weights={path}"],
      cwd=REPO, capture_output=True, text=True, env=subprocess_env(jax_cache), timeout=600)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "takes 32x32 images, but config.data gives 16x16" in result.stderr
  assert os.listdir(tmp_path) == ["model32.onnx"]


@pytest.mark.slow
def test_mobilenetv3_large_int8_file_is_at_most_035x_float32(tmp_path):
  """The size budget at full scale (random weights: size does not depend on their values)."""
  import torch  # pylint: disable=g-import-not-at-top
  from rap_flax import models, weights  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import models as torch_models  # pylint: disable=g-import-not-at-top
  config = config_lib.load_recipe(str(DIGITS))
  config.model.update(arch="mobilenetv3_large", width_multiplier=1.0, cifar=False)
  config.data.image_size = 224
  model_spec = models.spec_from_config(config, data.num_classes(config.data))
  torch.manual_seed(0)
  pth = tmp_path / "random.pth"
  weights.save_state_dict(
      weights.load_variables(torch_models.create_model(model_spec).state_dict(), model_spec),
      model_spec, str(pth))
  sizes = {}
  for side, extra in (("float32", ()), ("int8", ("--quantize=int8", "--calibration_batches=1"))):
    output = tmp_path / f"{side}.onnx"
    result = run_cli("to-onnx", f"--input={pth}", f"--output={output}", f"--config={DIGITS}",
                     "--config.model.arch=mobilenetv3_large",
                     "--config.model.width_multiplier=1.0", "--config.model.cifar=False",
                     "--config.data.image_size=224", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    sizes[side] = output.stat().st_size
  assert sizes["int8"] <= 0.35 * sizes["float32"], sizes


@pytest.mark.slow
def test_onnx_deploy_reports_sizes_latency_and_accuracy(trained, tmp_path):
  output = tmp_path / "onnx_deploy.json"
  result = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "onnx_deploy.py"), "--models=demo",
       f"--demo_workdir={trained}", "--rounds=2", "--iterations=3", "--warmup=1",
       "--allow_loaded", f"--output={output}"],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  order = [line.split()[2].rstrip(":") for line in result.stderr.splitlines()
           if line.strip().startswith("round ")]
  sides = ["flax", "float32", "int8", "int8_s8s8"]
  assert order == sides + sides[::-1], order
  demo = json.loads(output.read_text())["models"]["demo"]
  assert demo["image_size"] == 16
  assert demo["megabytes"]["int8"] < demo["megabytes"]["float32"]
  for side in sides:
    latency = demo[side]["latency_ms"]
    assert len(latency["rounds"]) == 2 and 0 < latency["min"] <= latency["median"]
  accuracy = demo["accuracy"]
  assert accuracy["float32"]["top1"] == accuracy["flax"]["top1"]
  assert abs(accuracy["int8"]["top1"] - accuracy["flax"]["top1"]) <= INT8_TOLERANCE
  assert result.stdout.count("| demo 16px, ") == 3  # the README rows
