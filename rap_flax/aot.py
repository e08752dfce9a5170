"""Sizing without the hardware: compile the train and eval steps ahead of time for a TPU slice
or an H100, and report memory, collectives, traffic and a roofline estimate.

  python -m rap_flax.aot --config=configs/imagenet_mafc.py --topology=v5e:2x4 [--output=r.json]
  python -m rap_flax.aot --config=configs/imagenet_mafc.py:mobilenetv3_large --topology=h100:8
  python -m rap_flax.aot ... --config.batch_size=2048 --config.model.dtype=bfloat16

The steps are those train.py builds (rap_flax.training.program), compiled by the real
compilers: libtpu for TPU topologies (v4, v5e, v5p, v6e shapes, multi-host slices included)
and jax's CUDA plugin for an H100, both installed by the dev extra and both running on any
x86 machine. Every figure is derived from the compiled program, not measured on hardware:
memory from the compiler's buffer assignment, flops and bytes from its cost analysis (or, on
the GPU path, where that returns None, summed from the optimized HLO), step time and images/s
from a roofline, max(flops / peak, bytes / HBM bandwidth), with the chip's published peaks.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import math
import os
import re
import time
from typing import Any

from absl import flags

from rap_flax import cli, files, hlo, platforms

FLAGS = flags.FLAGS
EXAMPLES = "v5e:2x4, v5e:16x16, v5p:2x2x2, v6e:2x2, v4:2x2x1, h100, h100:8"
LARGEST_BATCH = ("fit", "none")


@dataclasses.dataclass(frozen=True)
class Chip:
  """Published figures of one device: bf16 dense peak, HBM capacity and bandwidth."""
  name: str
  peak_flops: float
  hbm_bytes: float
  hbm_bandwidth: float
  source: str

  def split(self, devices_per_chip: int) -> Chip:
    """The share of one of `devices_per_chip` jax devices (v4 exposes its two cores)."""
    if devices_per_chip == 1:
      return self
    return dataclasses.replace(
        self, name=f"{self.name} (1 of {devices_per_chip} cores)",
        peak_flops=self.peak_flops / devices_per_chip,
        hbm_bytes=self.hbm_bytes / devices_per_chip,
        hbm_bandwidth=self.hbm_bandwidth / devices_per_chip)


# Matched against jax's device_kind. TPU: the Cloud TPU system-architecture pages, whose "GB"
# of HBM are GiB (libtpu reports 15.75 of v5e's 16 available to a program); H100: the target
# description's memory size and bandwidth, NVIDIA's data sheet for the dense bf16 peak.
CHIPS = {
    "TPU v4": Chip("TPU v4", 275e12, 32 * 2**30, 1200e9, "cloud.google.com/tpu/docs/v4"),
    "TPU v5 lite": Chip("TPU v5e", 197e12, 16 * 2**30, 819e9, "cloud.google.com/tpu/docs/v5e"),
    "TPU v5": Chip("TPU v5p", 459e12, 95 * 2**30, 2765e9, "cloud.google.com/tpu/docs/v5p"),
    "TPU v6 lite": Chip("TPU v6e", 918e12, 32 * 2**30, 1638e9, "cloud.google.com/tpu/docs/v6e"),
    "NVIDIA H100 80GB HBM3": Chip("H100 SXM", 989e12, 84942979072, 3.35232e12,
                                  "NVIDIA H100 data sheet; rap_flax/targets/h100_sxm.txtpb"),
}
GPU_TARGETS = {"h100": "h100_sxm.txtpb"}

# libtpu's start-up warnings where no TPU is attached (it looks for the host's own TPU), and
# XLA:GPU's alarm for compiles that take minutes (the norm for a whole network here).
_COMPILER_NOTICES = re.compile(
    r"TPU_ACCELERATOR_TYPE|TPU_WORKER_HOSTNAMES|Logging before InitGoogle|"
    r"^=== Source Location Trace|libtpu_init_utils\.cc|^WARNING: All log messages before absl|"
    r"Very slow compile\?|^\*{20,}\s*$|slow_operation_alarm")


def define_flags() -> None:
  cli.define_config_flag()
  flags.DEFINE_string("topology", None, f"A TPU slice or GPUs, e.g. {EXAMPLES}.")
  flags.DEFINE_string("output", None, "Write the full report as JSON here.")
  flags.DEFINE_enum("largest_batch", "fit", LARGEST_BATCH,
                    "fit: the largest global batch that fits, from a second compile at half "
                    "the per-device batch (memory is linear in it); none: skip it.")
  flags.DEFINE_integer("fusions", 0, "Also list the train step's N instructions that access "
                       "the most bytes (fusions, copies, collectives).")
  flags.DEFINE_string("save_hlo", None, "Write the optimized HLO of the train step here.")
  flags.mark_flag_as_required("topology")


def topology_devices(name: str) -> list:
  """The compile-only devices of a TPU topology ("v5e:2x4") or of GPUs ("h100", "h100:8")."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  gpu, _, count = name.partition(":")
  if gpu in GPU_TARGETS:
    if count and not (count.isdigit() and int(count) > 0):
      raise ValueError(f"--topology={name}: the GPU count after ':' is a positive integer "
                       f"(e.g. {gpu}:8).")
    target = importlib.resources.files("rap_flax").joinpath("targets", GPU_TARGETS[gpu])
    try:
      return topologies.get_topology_desc(
          gpu, "cuda", target_config=target.read_text(),
          topology=f"1x1x{count or 1}").devices
    except NotImplementedError as error:
      raise ValueError("GPU compiles need jax's CUDA plugin: pip install "
                       "jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2 (in rap_flax's "
                       "dev extra).") from error
  from jax._src.cloud_tpu_init import get_tpu_library_path  # pylint: disable=g-import-not-at-top
  if get_tpu_library_path() is None:
    raise ValueError("TPU compiles need libtpu: pip install libtpu==0.0.42.1 (in rap_flax's "
                     "dev extra).")
  # Compiling shares nothing with a running TPU program, so another process may hold libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.errors import JaxRuntimeError  # pylint: disable=g-import-not-at-top
  try:
    with platforms.stderr_without(_COMPILER_NOTICES):
      return topologies.get_topology_desc(topology_name=name, platform="tpu").devices
  except JaxRuntimeError as error:
    reason = str(error).split(": ", 1)[-1].strip()
    raise ValueError(f"Unknown --topology={name} ({reason}); examples: {EXAMPLES}.") from None


def device_figures(topology: str, devices: list) -> Chip:
  """The published figures of one of `devices`, the devices of `topology`."""
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"No published figures for {kind!r}; known: {', '.join(CHIPS)}.")
  shape = topology.partition(":")[2]
  chips = math.prod(int(n) for n in shape.split("x")) if "x" in shape else len(devices)
  return CHIPS[kind].split(max(1, len(devices) // chips))


def _dataset_info(config):
  """The dataset as the program needs it, without reading (or having) the data: sizing needs
  only its classes and image size (its split sizes set the schedule's constants, nothing
  that is compiled differently)."""
  from rap_flax import data  # pylint: disable=g-import-not-at-top
  from rap_flax.data import catalog  # pylint: disable=g-import-not-at-top

  name = config.data.dataset
  if name not in catalog.TFDS_DATASETS:
    return data.get_dataset_info(config.data)  # in memory: cheap
  image_size = config.data.image_size or catalog.TFDS_DATASETS[name].image_size
  return data.DatasetInfo(name, data.num_classes(config.data), num_train=config.batch_size,
                          num_eval=config.eval_batch_size, image_size=image_size)


def _memory(compiled) -> dict[str, int]:
  stats = compiled.memory_analysis()
  arguments, outputs = stats.argument_size_in_bytes, stats.output_size_in_bytes
  aliased, temporaries = stats.alias_size_in_bytes, stats.temp_size_in_bytes
  return {"arguments_bytes": arguments, "outputs_bytes": outputs, "aliased_bytes": aliased,
          "temporaries_bytes": temporaries,
          "generated_code_bytes": stats.generated_code_size_in_bytes,
          # Donated arguments share their buffers with the outputs they become.
          "total_bytes": arguments + outputs - aliased + temporaries +
                         stats.generated_code_size_in_bytes}


def _layer_of(instruction: hlo.Instruction) -> str:
  """"fwd stage2/unit1/conv1 conv_general_dilated" from the instruction's jax op_name."""
  name = instruction.op_name
  passes = "bwd" if "transpose(" in name else "fwd"
  path = [part for part in name.split("/") if not part.startswith(("jit(", "jvp(", "transpose("))]
  if "backbone" in path:
    path = path[path.index("backbone") + 1:]
  return f"{passes} {'/'.join(path)}" if path else passes


def largest_instructions(module: hlo.Module, count: int, per_device_batch: int) -> list[dict]:
  return [{"mb_per_image": size / per_device_batch / 1e6, "opcode": instruction.opcode,
           "where": _layer_of(instruction),
           "result": re.sub(r"\{[^}]*\}", "", instruction.shape)[:120]}
          for size, instruction in module.largest(count)]


def analyse(compiled, per_device_batch: int, chip: Chip, compile_s: float,
            fusions: int = 0) -> dict[str, Any]:
  """Memory, collectives, flops, bytes and the roofline of one compiled step (per device)."""
  module = hlo.Module(compiled.as_text())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost and cost.get("bytes accessed"):
    flops, bytes_accessed = cost.get("flops", 0.0), cost["bytes accessed"]
    source = "XLA cost analysis"
  else:
    flops = None
    bytes_accessed = module.total_bytes_accessed()
    source = "summed from the optimized HLO (no cost analysis on this path)"
  memory = _memory(compiled)
  memory_s = bytes_accessed / chip.hbm_bandwidth
  compute_s = (flops or 0.0) / chip.peak_flops
  step_s = max(memory_s, compute_s)
  off_chip_step_s = max(module.off_chip_bytes() / chip.hbm_bandwidth, compute_s)
  counts = module.opcode_counts()
  return {
      "compile_s": compile_s, "per_device_batch": per_device_batch, "memory": memory,
      "collectives": module.collectives(),
      "flops": flops, "bytes_accessed": bytes_accessed, "bytes_accessed_source": source,
      "flops_per_image": None if flops is None else flops / per_device_batch,
      "bytes_per_image": bytes_accessed / per_device_batch,
      # Of the bytes the optimized HLO's instructions access, those outside on-chip memory.
      "off_chip_bytes_per_image": module.off_chip_bytes() / per_device_batch,
      "largest_instructions": largest_instructions(module, fusions, per_device_batch),
      "ops": {"fusions": counts["fusion"], "transposes": counts["transpose"],
              "convolution_custom_calls": sum(
                  1 for i in module.top_level()
                  if i.opcode == "custom-call" and "cudnn$conv" in i.line)},
      "roofline_estimate": {
          "step_s": step_s, "images_per_s_per_device": per_device_batch / step_s,
          "bound": "memory" if memory_s >= compute_s else "compute",
          # The same over the off-chip bytes only: what HBM bandwidth allows if on-chip
          # accesses cost nothing (the cost analysis's bytes include them).
          "off_chip_images_per_s_per_device": per_device_batch / off_chip_step_s,
          "note": "max(flops / peak, bytes / HBM bandwidth) of the compiled program: an "
                  "estimate, not a measurement" + (
                      "; the flops are unknown here, so memory-bound by assumption"
                      if flops is None else "")}}


class _DoesNotFit(Exception):
  """The compiler refused the program for lack of device memory (its message says why)."""


def _compile(step, *args):
  """(compiled, seconds); raises _DoesNotFit where the TPU compiler runs out of memory."""
  from jax.errors import JaxRuntimeError  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  try:
    with platforms.stderr_without(_COMPILER_NOTICES):
      compiled = step.lower(*args).compile()
  except JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    raise _DoesNotFit(str(error).split("RESOURCE_EXHAUSTED: ", 1)[-1].strip()) from None
  return compiled, time.perf_counter() - start


def _step_report(step, args, per_device_batch: int, chip: Chip, fusions: int = 0,
                 save_hlo: str | None = None) -> dict[str, Any]:
  try:
    compiled, seconds = _compile(step, *args)
  except _DoesNotFit as error:
    return {"per_device_batch": per_device_batch, "fits": False, "compiler": str(error)}
  if save_hlo:
    with files.atomic_output(save_hlo) as tmp, open(tmp, "w") as f:
      f.write(compiled.as_text())
  return {"fits": None, **analyse(compiled, per_device_batch, chip, seconds, fusions)}


def size(config, topology: str, largest_batch: str = "fit", fusions: int = 0,
         save_hlo: str | None = None) -> dict[str, Any]:
  """Compiles config's train and eval steps for `topology`; returns the report (see module)."""
  from rap_flax.training import config_lib, parallel  # pylint: disable=g-import-not-at-top
  from rap_flax.training import program as program_lib  # pylint: disable=g-import-not-at-top

  config_lib.validate_config(config)
  devices = topology_devices(topology)
  chip = device_figures(topology, devices)
  count = len(devices)
  for name in ("batch_size", "eval_batch_size"):
    if config[name] % count:
      raise ValueError(f"{name}={config[name]} does not split over the {count} devices of "
                       f"{topology}; use a multiple of {count}.")
  mesh = parallel.create_mesh(devices)
  program = program_lib.build(config, mesh, _dataset_info(config))
  state = program.abstract_state()
  train = _step_report(program.train_step, (state, program.abstract_batch(config.batch_size)),
                       config.batch_size // count, chip, fusions, save_hlo)
  evaluation = _step_report(program.eval_step, (state.variables, program.abstract_batch(
      config.eval_batch_size)), config.eval_batch_size // count, chip)
  for step in (train, evaluation):
    if step["fits"] is None:
      step["fits"] = step["memory"]["total_bytes"] <= chip.hbm_bytes
  return {
      "topology": topology, "platform": program.platform, "device_kind": devices[0].device_kind,
      "chip": dataclasses.asdict(chip), "devices": count,
      "hosts": len({device.process_index for device in devices}),
      "model": {"arch": config.model.arch, "attention": config.model.attention,
                "dtype": config.model.dtype, "image_size": program.image_size,
                "num_classes": program.model.model_spec.num_classes,
                "depthwise_implementation": program.model.depthwise_implementation},
      "global_batch": config.batch_size, "eval_global_batch": config.eval_batch_size,
      "train_step": train, "eval_step": evaluation,
      "largest_batch": (_largest_batch(program, state, train, chip, count)
                        if largest_batch == "fit" else None)}


def _largest_batch(program, state, train, chip: Chip, count: int,
                   halvings: int = 6) -> dict[str, Any]:
  """The largest global batch whose train step fits, from the compiled memory at two
  per-device batches (the config's and its half, or, where it does not fit, the first two
  halvings that do): the temporaries grow linearly with the batch, the state does not."""
  batch = train["per_device_batch"]
  totals = {batch: train["memory"]["total_bytes"]} if train["fits"] else {}
  seconds = 0.0
  for _ in range(halvings):
    batch //= 2
    if len(totals) == 2 or batch < 1:
      break
    try:
      compiled, spent = _compile(program.train_step, state,
                                 program.abstract_batch(batch * count))
    except _DoesNotFit:
      continue
    seconds += spent
    totals[batch] = _memory(compiled)["total_bytes"]
  if len(totals) < 2:
    return {"global": None, "method": "no two per-device batches compiled within HBM"}
  (small, small_bytes), (large, large_bytes) = sorted(totals.items())
  slope = (large_bytes - small_bytes) / (large - small)
  method = (f"linear fit of the compiled train step's memory at per-device batches {small} "
            f"and {large} ({seconds:.0f} s more compile)")
  if slope <= 0:
    return {"global": None, "method": method + "; memory did not grow with the batch"}
  fixed = large_bytes - slope * large
  per_device = int((chip.hbm_bytes - fixed) // slope)
  return {"global": per_device * count, "per_device": per_device, "bytes_per_example": slope,
          "fixed_bytes": fixed, "method": method}


def _gib(value: float) -> str:
  return f"{value / 2**30:.2f} GiB"


def summary(report: dict[str, Any]) -> str:
  """The report in a few lines (every figure an estimate from the compiled program)."""
  chip, model, train = report["chip"], report["model"], report["train_step"]
  lines = [
      f"{model['arch']} + {model['attention']} ({model['dtype']}, {model['image_size']}px, "
      f"{model['num_classes']} classes, depthwise {model['depthwise_implementation']}) on "
      f"{report['topology']}: {report['devices']} x {report['device_kind']} "
      f"({report['hosts']} host(s)); global batch {report['global_batch']} "
      f"({train['per_device_batch']} per device).",
      "Estimates derived from the compiled programs, not measured on hardware:"]
  for label, step in (("train step", train), ("eval step", report["eval_step"])):
    if "memory" not in step:
      lines.append(f"  {label}: DOES NOT FIT at {step['per_device_batch']} per device: "
                   f"{step['compiler']}")
      continue
    memory = step["memory"]
    lines.append(
        f"  {label}: {_gib(memory['total_bytes'])} per device of {_gib(chip['hbm_bytes'])} "
        f"HBM ({'fits' if step['fits'] else 'DOES NOT FIT'}; arguments "
        f"{_gib(memory['arguments_bytes'])}, temporaries {_gib(memory['temporaries_bytes'])}); "
        f"compiled in {step['compile_s']:.0f} s.")
  largest = report["largest_batch"]
  if largest and largest["global"]:
    lines.append(f"  largest global batch that fits: {largest['global']:,} "
                 f"({largest['per_device']} per device; {largest['method']}).")
  elif largest:
    lines.append(f"  largest global batch: unknown ({largest['method']}).")
  if "memory" not in train:
    return "\n".join(lines)
  collectives = ", ".join(f"{kind} x{c['count']} ({c['bytes'] / 1e6:.1f} MB)"
                          for kind, c in sorted(train["collectives"].items())) or "none"
  lines.append(f"  collectives per train step: {collectives}.")
  flops = (f"{train['flops_per_image'] / 1e9:.2f} GFLOP and " if train["flops"] else "")
  off_chip = train["off_chip_bytes_per_image"]
  lines.append(f"  per image: {flops}{train['bytes_per_image'] / 1e6:.1f} MB accessed "
               f"({train['bytes_accessed_source']})" + (
                   f", {off_chip / 1e6:.1f} MB of it outside on-chip memory."
                   if off_chip < 0.99 * train["bytes_per_image"] else "."))
  roofline = train["roofline_estimate"]
  lines.append(f"  roofline: {1e3 * roofline['step_s']:.1f} ms/step, "
               f"{roofline['images_per_s_per_device']:,.0f} images/s per device "
               f"({roofline['bound']}-bound at {chip['hbm_bandwidth'] / 1e9:,.0f} GB/s, "
               f"{chip['peak_flops'] / 1e12:,.0f} TFLOP/s); over the off-chip bytes only "
               f"{roofline['off_chip_images_per_s_per_device']:,.0f}.")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"Unexpected arguments: {argv[1:]}; flags take the form --name=value.")
  report = size(cli.load_config(), FLAGS.topology, FLAGS.largest_batch, FLAGS.fusions,
                files.expand(FLAGS.save_hlo) if FLAGS.save_hlo else None)
  print(summary(report))
  for row in report["train_step"].get("largest_instructions", []):
    print(f"  {row['mb_per_image']:6.2f} MB/image  {row['opcode']:12s} {row['where']:40s} "
          f"{row['result'][:60]}")
  if FLAGS.output:
    output = files.expand(FLAGS.output)
    with files.atomic_output(output) as tmp, open(tmp, "w") as f:
      json.dump(report, f, indent=2, sort_keys=True)
    print(f"Report written to {output}.")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
