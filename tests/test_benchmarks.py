"""The benchmarks refuse a busy machine and report rounds, spread and load."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
LOAD_LIMIT = 0.5 * (os.cpu_count() or 1)  # benchmarks/harness.py: 0.5 per core


def run_benchmark(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def without_tensorflow(tmp_path) -> dict[str, str]:
  """An environment in which tensorflow and tfds fail to import, as on the lent GPU machine."""
  blocked = tmp_path / "no_tensorflow"
  for name in ("tensorflow", "tensorflow_datasets"):
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(
        f"raise ImportError('{name} is not installed on the GPU machine')\n")
  return {"PYTHONPATH": os.pathsep.join(
      [str(blocked), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture(scope="class")
def busy_machine():
  """Busy child processes, two per core, until the 1-minute load average is over the limit.

  They run at the lowest priority: the load average counts them all the same, and the tests
  running beside these on the other xdist workers are hardly slowed.
  """
  spin = "import os\nos.nice(19)\nwhile True: pass"
  children = [subprocess.Popen([sys.executable, "-c", spin])
              for _ in range(2 * (os.cpu_count() or 1))]
  try:
    deadline = time.monotonic() + 120
    while os.getloadavg()[0] <= LOAD_LIMIT + 0.2:
      assert time.monotonic() < deadline, "the load average did not rise"
      time.sleep(1)
    yield
  finally:
    for child in children:
      child.kill()
      child.wait()


class TestOnALoadedMachine:  # the busy children live as long as this class's tests

  @pytest.mark.parametrize("script", ["train_step.py", "depthwise_conv.py", "input_pipeline.py",
                                      "onnx_deploy.py"])
  def test_refuses_to_run(self, busy_machine, tmp_path, script):
    output = tmp_path / "result.json"
    result = run_benchmark(script, f"--output={output}")
    assert result.returncode == 3, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and "load average" in message[0] and "--allow_loaded" in message[0]
    assert not output.exists()


@pytest.mark.slow
def test_train_step_reports_alternating_rounds_spread_and_load(tmp_path):
  output = tmp_path / "train_step.json"
  result = run_benchmark(
      "train_step.py", "--arch=mobilenetv1", "--attention=none", "--image_size=32",
      "--batch_size=4", "--steps=2",
      "--rounds=2", "--depthwise_implementation=grouped", "--allow_loaded",
      f"--output={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  # Sides alternate: flax, torch, then torch, flax.
  order = [line.split()[2].rstrip(":") for line in result.stderr.splitlines()
           if line.strip().startswith("round ")]
  assert order == ["flax", "torch", "torch", "flax"], order
  report = json.loads(output.read_text())
  assert set(report["load_before"]) == {"1min", "5min", "15min"} and report["load_after"]
  assert report["machine"]["threads"] >= 1 and report["machine"]["cpu"]
  (case,) = report["cases"]
  for side in ("flax", "torch"):
    step = case[side]["step_s"]
    assert len(step["rounds"]) == 2 and step["min"] <= step["median"] <= step["max"]
  assert len(case["flax"]["compile_overhead_s"]["rounds"]) == 2
  ratio = case["flax_over_torch"]
  assert ratio["min"] <= ratio["median"] <= ratio["max"]


@pytest.mark.slow
def test_gpu_suite_smoke_runs_everything_at_tiny_sizes(tmp_path):
  """benchmarks/gpu_suite.py --smoke: the whole GPU suite on the CPU, so it cannot rot, and
  without tensorflow, which the GPU machine lacks."""
  # Unoptimised XLA code is enough to check the plumbing, and compiles the three cases faster.
  env = {**without_tensorflow(tmp_path), "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  result = run_benchmark("gpu_suite.py", "--smoke", f"--output_dir={tmp_path}", env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "FAILED" not in result.stderr, result.stderr[-3000:]
  train_step = json.loads((tmp_path / "gpu_train_step.json").read_text())
  for key in ("device", "flax_images_per_second", "torch_eager_images_per_second",
              "torch_compile_images_per_second"):
    assert train_step[key] is not None, key
  # Fractions of a card's published peaks: None on the CPU, which has no entry in CARDS.
  assert {"hbm_bandwidth_fraction", "bf16_peak_fraction"} <= set(train_step)
  assert [case["case"] for case in train_step["cases"]] == ["v3_large_srap", "v1_mafc", "v2_srap"]
  timm_sides = [train_step["cases"][0][side] for side in ("timm_eager", "timm_compile")]
  if importlib.util.find_spec("timm") is None:
    assert all(side["skipped"].startswith("timm is not installed") for side in timm_sides)
  else:
    assert all(side["images_per_second"] > 0 for side in timm_sides)
  assert train_step["cases"][0]["flax"]["flops"] > 0
  assert train_step["cases"][0]["flax"]["bytes_accessed"] > 0
  depthwise = json.loads((tmp_path / "gpu_depthwise.json").read_text())
  implementations = {(row["implementation"], row["dtype"]) for row in depthwise["rows"]}
  assert implementations == {(name, dtype) for name in ("grouped", "shifted", "shifted_vjp",
                                                        "torch")
                             for dtype in ("bfloat16", "float32")}


@pytest.mark.slow
def test_gpu_suite_part_that_fails_reports_its_error_and_the_others_still_run(tmp_path):
  result = run_benchmark("gpu_suite.py", "--smoke", "--cases=v1_mafc",
                         "--depthwise_implementation=no_such_implementation",
                         f"--output_dir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "flax:v1_mafc: FAILED" in result.stderr
  (case,) = json.loads((tmp_path / "gpu_train_step.json").read_text())["cases"]
  assert "no_such_implementation" in case["flax"]["error"]
  assert case["torch_eager"]["images_per_second"] > 0 and case["flax_over_torch_eager"] is None
  depthwise = json.loads((tmp_path / "gpu_depthwise.json").read_text())
  assert depthwise["rows"] and not depthwise["errors"]


@pytest.mark.slow
def test_input_pipeline_reports_the_decode_bound_and_eval_in_alternating_rounds(tmp_path):
  output = tmp_path / "input_pipeline.json"
  result = run_benchmark(
      "input_pipeline.py", "--imagenet_images=160", "--imagenet_eval_images=64",
      "--dogs_per_class=1", "--batch_size=8", "--rounds=2", "--allow_loaded",
      f"--output={output}")
  assert result.returncode == 0, result.stderr[-3000:]
  order = [line.split()[2].rstrip(":") for line in result.stderr.splitlines()
           if line.strip().startswith("round ")]
  assert order == ["pil", "ours", "bound", "bound", "ours", "pil"], order
  report = json.loads(output.read_text())
  train = report["imagenet_train"]
  for figure in ("pil_torchvision_transforms", "ours", "decode_only_bound"):
    assert len(train[figure]["rounds"]) == 2 and train[figure]["median"] > 0
  assert train["fraction_of_bound"]["median"] == pytest.approx(
      train["ours"]["median"] / train["decode_only_bound"]["median"])
  assert len(report["imagenet_eval"]["ours"]["rounds"]) == 2
  assert "decode-only bound" in result.stdout and "ImageNet eval" in result.stdout
