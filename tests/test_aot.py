"""Ahead-of-time compiles for a TPU slice and an H100 on this CPU-only machine (rap_flax.aot).

The compilers are libtpu and jax's CUDA plugin, both in the dev extra; without them the tests
that need them skip and say why. The HLO figures (rap_flax.hlo) are checked on a hand-written
module.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from rap_flax import hlo

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits_srap.py"
# MobileNetV1 w0.25 + SRAP (avg,std), CIFAR stem: the digits demo's model, at 32px.
SMALL = ("--config.data.image_size=32", "--config.batch_size=64", "--config.eval_batch_size=64",
         "--config.model.dtype=bfloat16")
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (pip install libtpu==0.0.42.1, "
                                  "in the dev extra)")
needs_cuda_plugin = pytest.mark.skipif(
    importlib.util.find_spec("jax_cuda12_plugin") is None,
    reason="jax's CUDA plugin is not installed (pip install jax-cuda12-plugin==0.10.2 "
    "jax-cuda12-pjrt==0.10.2, in the dev extra)")


def run_aot(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
  output = tmp_path / "report.json"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO),
                                                      os.environ.get("PYTHONPATH", "")])}
  env.pop("JAX_PLATFORMS", None)  # as a user runs it: the tool must keep itself quiet
  result = subprocess.run([sys.executable, "-m", "rap_flax.aot", f"--config={DIGITS}",
                           f"--output={output}", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=600)
  return result, json.loads(output.read_text()) if output.exists() else None


def _check_report(result, report, devices: int, platform: str) -> dict:
  assert result.returncode == 0, result.stderr[-3000:]
  printed = (result.stdout + result.stderr).strip().splitlines()
  assert len(printed) <= 30, printed
  assert report["devices"] == devices and report["platform"] == platform
  train = report["train_step"]
  assert train["fits"] and report["eval_step"]["fits"]
  memory = train["memory"]
  assert 0 < memory["arguments_bytes"] < memory["total_bytes"] < report["chip"]["hbm_bytes"]
  assert train["bytes_per_image"] > 0 and train["roofline_estimate"]["images_per_s_per_device"] > 0
  # "auto" resolved from the mesh's devices, not from this CPU host (shifted_vjp).
  assert report["model"]["depthwise_implementation"] == "grouped"
  return train


@pytest.mark.slow  # 80 s of compile on the loaded 2-core dev machine (the gates are most of it)
@needs_libtpu
def test_tpu_train_step_compiles_fits_and_only_all_reduces(tmp_path):
  result, report = run_aot(tmp_path, "--topology=v5e:2x2", "--largest_batch=none", *SMALL)
  train = _check_report(result, report, devices=4, platform="tpu")
  assert train["bytes_accessed_source"] == "XLA cost analysis" and train["flops"] > 0
  # Batch-sharded data parallelism: gradients and BatchNorm statistics are all-reduced, and
  # nothing (the gates' top-n ranking included) gathers another device's examples.
  assert set(train["collectives"]) == {"all-reduce"}, train["collectives"]
  assert "libtpu" not in result.stderr and "TPU_" not in result.stderr, result.stderr
  # benchmarks/sizing.py writes the README's table from such reports.
  sizing = _benchmark_module("sizing")
  header, _, row = sizing.table({"v1_mafc@v5e:2x4": {"report": report}})
  assert header.count("|") == row.count("|")
  memory_gib = train["memory"]["total_bytes"] / 2**30
  assert f"| MobileNetV1 + MAFC | v5e:2x2 (4 x TPU v5e) | {memory_gib:.2f} / " in row, row
  assert f"| {train['bytes_per_image'] / 1e6:.1f}; " in row, row


def _benchmark_module(name: str):
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  finally:
    sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.slow
@needs_cuda_plugin
def test_h100_train_step_compiles_and_fits(tmp_path):
  # SRAP with (avg, max): XLA's GPU fusion pass spends about 8 s per gate on the std
  # pooling's backward (benchmarks/README.md, "Compile time"); the TPU test keeps (avg, std).
  result, report = run_aot(tmp_path, "--topology=h100", "--largest_batch=none", *SMALL,
                           "--config.model.pool_types=('avg','max')")
  train = _check_report(result, report, devices=1, platform="gpu")
  assert train["flops"] is None and "optimized HLO" in train["bytes_accessed_source"]
  assert train["bytes_accessed"] > 0
  assert train["ops"]["convolution_custom_calls"] > 0  # cuDNN does the convolutions
  assert "cuda" not in result.stderr.lower(), result.stderr


@needs_libtpu
def test_unknown_topology_is_one_line_with_examples(tmp_path):
  result, report = run_aot(tmp_path, "--topology=v9x:2x2")
  assert result.returncode == 2 and report is None
  assert result.stderr.strip().count("\n") == 0, result.stderr
  assert "--topology=v9x:2x2" in result.stderr and "v5e:2x4" in result.stderr


_AUTO_VERSUS_GROUPED = textwrap.dedent("""
    import json
    from rap_flax import aot
    from rap_flax.data import DatasetInfo
    from rap_flax.training import config_lib, parallel, program as program_lib

    mesh = parallel.create_mesh(aot.topology_devices("v5e:2x2"))
    config = config_lib.base_config()
    config.model.width_multiplier, config.model.cifar = 0.25, True
    texts = {}
    for name in ("auto", "grouped"):
      config.model.depthwise_implementation = name
      program = program_lib.build(config, mesh, DatasetInfo("synthetic", 10, 64, 8, 32))
      texts[name] = program.train_step.lower(program.abstract_state(),
                                             program.abstract_batch(16)).as_text()
    print(json.dumps({"resolved": program.model.depthwise_implementation,
                      "same": texts["auto"] == texts["grouped"]}))
""")


@needs_libtpu
def test_auto_on_a_tpu_mesh_builds_the_grouped_program():
  """From this CPU host "auto" would be shifted_vjp (3.6x the bytes on a TPU); built for a
  TPU mesh it is the grouped program, instruction for instruction."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO),
                                                      os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", _AUTO_VERSUS_GROUPED], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == {"resolved": "grouped",
                                                                "same": True}


MODULE = textwrap.dedent("""
    HloModule jit_step

    %add (a: f32[], b: f32[]) -> f32[] {
      %a = f32[] parameter(0)
      %b = f32[] parameter(1)
      ROOT %sum = f32[] add(%a, %b)
    }

    %fused_computation (p0: bf16[8,16]) -> bf16[8,16] {
      %p0 = bf16[8,16]{1,0} parameter(0)
      ROOT %neg = bf16[8,16]{1,0} negate(%p0)
    }

    ENTRY %main (x: bf16[8,16], w: f32[16,4]) -> (f32[4], bf16[8,16]) {
      %x = bf16[8,16]{1,0:T(8,128)(2,1)} parameter(0), metadata={op_name="x"}
      %w = f32[16,4]{1,0} parameter(1)
      %copy-start = (f32[16,4]{1,0:S(1)}, f32[16,4]{1,0}, u32[]{:S(2)}) copy-start(%w)
      %copy-done = f32[16,4]{1,0:S(1)} copy-done(%copy-start)
      %fusion = bf16[8,16]{1,0} fusion(%x), calls=%fused_computation, metadata={op_name="neg"}
      %reduced = f32[4]{0} all-reduce(%w_row), channel_id=1, to_apply=%add
      %w_row = f32[4]{0} slice(%copy-done), slice={[0:1], [0:4]}
      %gathered = f32[8]{0} all-gather(%reduced), dimensions={0}
      ROOT %out = (f32[4]{0}, bf16[8,16]{1,0}) tuple(%reduced, %fusion)
    }
""")


def test_hlo_bytes_and_collectives_of_a_module():
  module = hlo.Module(MODULE)
  by_name = {i.name: i for i in module.top_level()}
  assert set(by_name) == {"x", "w", "copy-start", "copy-done", "fusion", "reduced", "w_row",
                          "gathered", "out"}  # not the fused or reduction computations
  assert module.bytes_accessed(by_name["fusion"]) == 2 * 8 * 16 * 2  # operand + result
  assert module.bytes_accessed(by_name["copy-start"]) == 2 * 16 * 4 * 4  # read + written
  assert module.bytes_accessed(by_name["copy-done"]) == 0
  assert module.bytes_accessed(by_name["w_row"]) == 16 * 4 * 4 + 4 * 4
  assert module.total_bytes_accessed() == 512 + 512 + 272 + 32 + 48
  # The copy into on-chip memory (S(1)) touches HBM once; the slice reads on chip.
  assert module.off_chip_bytes() == 256 + 512 + 16 + 32 + 48
  assert module.collectives() == {"all-reduce": {"count": 1, "bytes": 16},
                                  "all-gather": {"count": 1, "bytes": 32}}
  assert by_name["fusion"].op_name == "neg"
  ranked = module.largest(3)
  assert [b for b, _ in ranked] == [512, 512, 272] and ranked[2][1].name == "w_row"
