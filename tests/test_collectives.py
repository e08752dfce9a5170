"""The batch-sharded train step communicates only through all-reduces.

Compiled on 8 simulated devices with the project's own mesh and shardings, the step of
MobileNetV3-large + SRAP must keep every per-example computation (the gates' top-n ranking
included) on the device that holds the example: the only collectives are all-reduces of the
gradients and of the global-batch BatchNorm statistics.
"""

import json
import os
import subprocess
import sys

import pytest

from rap_flax import hlo

SCRIPT = """
import json
from rap_flax.data import DatasetInfo
from rap_flax.training import config_lib, parallel, program as program_lib

config = config_lib.base_config()
config.model.arch, config.model.attention = "mobilenetv3_large", "srap"
config.model.width_multiplier = 0.25
config.model.depthwise_implementation = "grouped"  # the fastest to compile
mesh = parallel.create_mesh()
assert mesh.size == 8, mesh
program = program_lib.build(config, mesh, DatasetInfo("synthetic", 10, 160, 16, 64))
hlo = program.train_step.lower(program.abstract_state(),
                               program.abstract_batch(16)).compile().as_text()
print(json.dumps(hlo))
"""


@pytest.mark.slow
def test_eight_device_train_step_has_all_reduces_and_no_all_gather():
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  collectives = hlo.Module(json.loads(result.stdout.strip().splitlines()[-1])).collectives()
  assert collectives.get("all-reduce", {}).get("count", 0) > 0, "gradients must be all-reduced"
  assert set(collectives) == {"all-reduce"}, collectives
