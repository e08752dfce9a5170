"""`pip install .` gives a working package outside the checkout, with its data files."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_installed_package_imports_outside_the_checkout_and_finds_its_data(tmp_path):
  target = tmp_path / "site"
  install = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
       "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  code = ("import rap_flax, pathlib; from rap_flax.data import catalog; "
          "print(pathlib.Path(rap_flax.__file__).parent); "
          "print(len(catalog.imagenet_subset_wnids(100)), catalog.imagenet_subset_wnids(30)[0]); "
          "import importlib.resources as r; "  # the H100 description rap_flax.aot compiles for
          "print('gpu_device_info' in r.files('rap_flax').joinpath('targets', "
          "'h100_sxm.txtpb').read_text())")
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  run = subprocess.run([sys.executable, "-c", code], cwd=outside, capture_output=True,
                       text=True, env={**env, "PYTHONPATH": str(target)}, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  location, counts, gpu_target = run.stdout.split("\n")[:3]
  assert pathlib.Path(location) == target / "rap_flax"
  assert counts.startswith("100 n0")
  assert gpu_target == "True"
