"""Training end to end: data parallelism, multi-host, resume after kill/preemption, errors.

Runs that need their own jax process (simulated devices, several processes, signals) go
through train.py in a subprocess. All subprocesses share one persistent compilation cache and
compile without backend optimisation, so the tiny model below costs a few seconds to build.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits_srap.py"
# The digits demo shrunk for tests: 16px, batch 32, no gate (the gates are the models' tests;
# the 8-device test below keeps SRAP). Eval batch 112 leaves a padded remainder
# (360 = 3 * 112 + 24) so the masks are exercised.
TINY_FIELDS = {"data.image_size": 16, "batch_size": 32, "eval_batch_size": 112,
               "log_every_steps": 5, "model.attention": "none"}
TINY = tuple(f"--config.{k}={v}" for k, v in TINY_FIELDS.items())


def tiny_config(**overrides):
  """The config train.py builds from DIGITS and TINY, plus `overrides` (for in-process use)."""
  spec = importlib.util.spec_from_file_location("digits_srap", DIGITS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for name, value in {**TINY_FIELDS, **overrides}.items():
    *parents, leaf = name.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.getbasetemp() / "jax_compilation_cache"


def subprocess_env(jax_cache: pathlib.Path, devices: int = 1) -> dict[str, str]:
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0",
          "JAX_COMPILATION_CACHE_DIR": str(jax_cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def train_command(workdir, *overrides: str) -> list[str]:
  return [sys.executable, str(REPO / "train.py"), f"--config={DIGITS}", f"--workdir={workdir}",
          *TINY, *overrides]


def run_train(jax_cache, workdir, *overrides: str, devices: int = 1,
              expect_ok: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run(train_command(workdir, *overrides), cwd=REPO, capture_output=True,
                          text=True, env=subprocess_env(jax_cache, devices), timeout=600)
  if expect_ok:
    assert result.returncode == 0, result.stderr[-5000:]
  return result


def run_eval(jax_cache, workdir, *args: str) -> dict:
  output = pathlib.Path(workdir) / f"eval-{time.monotonic_ns()}.json"
  result = subprocess.run(
      [sys.executable, str(REPO / "eval.py"), f"--config={DIGITS}", f"--workdir={workdir}",
       f"--output={output}", *TINY, *args],
      cwd=REPO, capture_output=True, text=True, env=subprocess_env(jax_cache), timeout=600)
  assert result.returncode == 0, result.stderr[-5000:]
  return json.loads(output.read_text())


def read_results(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())


def checkpoint_steps(workdir) -> list[int]:
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def tree_digest(directory) -> str:
  digest = hashlib.sha256()
  for path in sorted(pathlib.Path(directory).rglob("*")):
    digest.update(str(path.relative_to(directory)).encode())
    if path.is_file():
      digest.update(path.read_bytes())
  return digest.hexdigest()


def restored_params(workdir, step: int) -> dict:
  """The params of a checkpoint as numpy, read with orbax directly (no model needed)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints",
                             item_handlers={"state": ocp.PyTreeCheckpointHandler()}) as manager:
    with warnings.catch_warnings():  # Orbax notes that it reads shardings from the files.
      warnings.simplefilter("ignore", UserWarning)
      state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
  return state.state["params"]


# A run of RESUME_STEPS steps with checkpoints every 4: the reference for the resume tests.
RESUME_STEPS = 20
RESUME_ARGS = (f"--config.num_train_steps={RESUME_STEPS}", "--config.checkpoint_every_steps=4")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, jax_cache) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run_train(jax_cache, workdir, *RESUME_ARGS)
  return workdir


def test_run_writes_checkpoints_events_and_results(uninterrupted):
  results = read_results(uninterrupted)
  assert results["step"] == RESUME_STEPS
  assert results["final"]["num_examples"] == 360  # The whole digits validation split.
  assert 0.0 <= results["final"]["top1"] <= results["final"]["top5"] <= 1.0
  # Last 3 kept (keep_checkpoints), plus the evaluated (best) one, which is the last here.
  assert checkpoint_steps(uninterrupted) == [12, 16, 20]
  assert results["best_step"] == RESUME_STEPS
  assert list(uninterrupted.glob("events.out.tfevents.*")), "TensorBoard events"


def _interrupt(jax_cache, workdir, sig: int) -> subprocess.Popen:
  """Starts the reference run and sends `sig` right after its first checkpoint."""
  process = subprocess.Popen(train_command(workdir, *RESUME_ARGS), cwd=REPO, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=subprocess_env(jax_cache))
  log = []
  for line in process.stderr:
    log.append(line)
    if "Saving checkpoint at step 8 " in line:
      process.send_signal(sig)
      break
  log.extend(process.stderr)
  process.wait(timeout=300)
  process.log = "".join(log)
  return process


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_the_same_trajectory(uninterrupted, tmp_path,
                                                               jax_cache):
  killed = _interrupt(jax_cache, tmp_path, signal.SIGKILL)
  assert killed.returncode == -signal.SIGKILL, killed.log[-3000:]
  assert not (tmp_path / "results.json").exists()
  assert max(checkpoint_steps(tmp_path)) < RESUME_STEPS, "killed before the end"

  resumed = run_train(jax_cache, tmp_path, *RESUME_ARGS)
  assert "Restored checkpoint of step" in resumed.stderr
  assert read_results(tmp_path) == read_results(uninterrupted)
  expected = restored_params(uninterrupted, RESUME_STEPS)
  actual = restored_params(tmp_path, RESUME_STEPS)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.slow
def test_sigterm_saves_stops_and_resumes(uninterrupted, tmp_path, jax_cache):
  stopped = _interrupt(jax_cache, tmp_path, signal.SIGTERM)
  assert stopped.returncode == 75, stopped.log[-3000:]  # cli.EXIT_PREEMPTED
  assert "Stopped at step" in stopped.log
  steps = checkpoint_steps(tmp_path)
  # The preemption checkpoint is at the step where it stopped, not only the periodic ones.
  stop_step = int(stopped.log.split("Stopped at step ")[1].split()[0].rstrip(":;"))
  assert stop_step in steps and 8 <= stop_step < RESUME_STEPS
  run_train(jax_cache, tmp_path, *RESUME_ARGS)
  assert read_results(tmp_path) == read_results(uninterrupted)


@pytest.mark.slow
def test_nan_loss_stops_loudly_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path,
                                                                  jax_cache):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  before = tree_digest(workdir / "checkpoints")
  result = run_train(jax_cache, workdir, "--config.num_train_steps=30",
                     "--config.learning_rate=1e30",  # finite, as validation demands; diverges
                     expect_ok=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "error: Training diverged" in result.stderr and "Traceback" not in result.stderr
  assert f"The last good checkpoint (step {RESUME_STEPS}) is left untouched" in result.stderr
  assert "Lower --config.learning_rate" in result.stderr
  assert tree_digest(workdir / "checkpoints") == before


@pytest.mark.slow
def test_workdir_of_another_architecture_is_refused(uninterrupted, tmp_path):
  from rap_flax.training import train_lib  # pylint: disable=g-import-not-at-top
  from rap_flax.weights import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  before = tree_digest(workdir / "checkpoints")
  config = tiny_config(**{"model.arch": "mobilenetv2", "num_train_steps": RESUME_STEPS + 4})
  with pytest.raises(checkpoint.ArchitectureMismatchError,
                     match=r"holds checkpoints of another model.*'arch': \('mobilenetv1', "
                     r"'mobilenetv2'\).*Use a fresh --workdir"):
    train_lib.train_and_evaluate(config, str(workdir))
  assert tree_digest(workdir / "checkpoints") == before


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  from rap_flax.training import train_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"data.dataset": "stanford_dogs",
                          "data.data_dir": str(tmp_path / "no_data")})
  with pytest.raises(Exception, match=r"(?s)'stanford_dogs' is not prepared.*prepare it once"):
    train_lib.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_unknown_config_field_names_the_fix(tmp_path, jax_cache):
  result = run_train(jax_cache, tmp_path, "--config.wieght_decay=0", expect_ok=False)
  assert result.returncode != 0
  assert "did you mean --config.weight_decay?" in result.stderr
  from rap_flax.training import train_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.model.widht_multiplier = 0.5
  with pytest.raises(ValueError, match="did you mean 'model.width_multiplier'"):
    train_lib.train_and_evaluate(config, str(tmp_path))


# Makes `import tensorflow` / `import tensorboard` fail, as on the GPU hosts, then runs train.py.
_WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, importlib.machinery, runpy, sys

    class Missing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
      def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard"):
          return importlib.machinery.ModuleSpec(name, self)
      def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}")
      def exec_module(self, module):
        pass

    sys.meta_path.insert(0, Missing())
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    assert not [m for m in sys.modules if m.startswith(("tensorflow", "tensorboard"))]
""")


@pytest.mark.slow
def test_trains_without_tensorflow(tmp_path, jax_cache):
  result = subprocess.run(
      [sys.executable, "-c", _WITHOUT_TENSORFLOW,
       *train_command(tmp_path, "--config.num_train_steps=4")[1:]],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=subprocess_env(jax_cache))
  assert result.returncode == 0, result.stderr[-5000:]
  assert "No TensorBoard events" in result.stderr
  assert read_results(tmp_path)["final"]["num_examples"] == 360
  assert checkpoint_steps(tmp_path) == [4]


# Runs inside a process with 8 simulated CPU devices. Each step starts both meshes from the
# same state (the one-device result of the previous step) and compares what one step does.
# Chaining several steps on each mesh separately would not test sharding: the SRAP gate's
# top-n sort routes gradients by the order of nearly tied descriptors, so float32 rounding
# alone (e.g. permuting the examples of a batch on one device) already moves the parameters
# by ~20% of the update after four steps.
_EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from ml_collections import config_flags
    from absl import flags
    from rap_flax import data
    from rap_flax.training import parallel, program as program_lib, train_lib

    argv, workdir = ["x", "--config=" + sys.argv[1]] + sys.argv[2:-1], sys.argv[-1]
    config_flags.DEFINE_config_file("config", sys_argv=argv)
    flags.FLAGS(argv)
    config = flags.FLAGS.config
    assert jax.device_count() == 8
    info = data.get_dataset_info(config.data)
    meshes = {n: Mesh(np.asarray(jax.devices()[:n]), ("data",)) for n in (1, 8)}
    programs = {n: program_lib.build(config, mesh, info) for n, mesh in meshes.items()}
    steps = {n: program.train_step for n, program in programs.items()}
    state = jax.device_get(programs[1].initial_state())
    flat = lambda tree: np.concatenate([np.ravel(x).astype(np.float64)
                                        for x in jax.tree.leaves(tree)])
    report = []
    for _, batch in zip(range(4), data.create_train_iterator(config.data, config.batch_size,
                                                             seed=config.seed)):
      out = {}
      for n, mesh in meshes.items():
        global_batch = parallel.make_global_batch(batch, parallel.data_sharding(mesh))
        assert len(global_batch["image"].sharding.device_set) == n
        new_state, metrics = steps[n](
            jax.device_put(state, parallel.replicated_sharding(mesh)), global_batch)
        out[n] = jax.device_get(new_state), float(metrics.loss.compute())
      update = {n: flat(out[n][0].params) - flat(state.params) for n in out}
      report.append({
          "loss": [out[1][1], out[8][1]],
          "update_norm": float(np.linalg.norm(update[1])),
          "update_error": float(np.linalg.norm(update[8] - update[1]) /
                                np.linalg.norm(update[1])),
          "batch_stats_error": float(np.abs(flat(out[8][0].batch_stats) -
                                            flat(out[1][0].batch_stats)).max()),
          "steps": [int(out[1][0].step), int(out[8][0].step)]})
      state = out[1][0]
    config.unlock()
    config.batch_size = 60
    try:
      train_lib.train_and_evaluate(config, workdir)
      error = None
    except ValueError as e:
      error = str(e)
    print(json.dumps({"steps": report, "error": error}))
""")


@pytest.mark.slow
def test_eight_devices_match_one_device_on_the_same_global_batch(tmp_path, jax_cache):
  result = subprocess.run(
      [sys.executable, "-c", _EIGHT_DEVICES, str(DIGITS), *TINY, "--config.warmup_epochs=0",
       "--config.model.attention=srap", "--config.label_smoothing=0.1",
       str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=subprocess_env(jax_cache, devices=8))
  assert result.returncode == 0, result.stderr[-5000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  for i, step in enumerate(report["steps"]):
    assert step["steps"] == [i + 1, i + 1]
    one, eight = step["loss"]
    assert eight == pytest.approx(one, rel=1e-5), step  # Global-batch BatchNorm statistics.
    assert step["batch_stats_error"] < 1e-4, step
    assert step["update_norm"] > 1e-2, "the step really trained"
    assert step["update_error"] < 2e-2, step
  # A batch that does not split over the devices is refused with the fix.
  assert "batch_size=60 is not divisible by the 8 devices" in report["error"]
  assert "--config.batch_size=56 or 64" in report["error"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_checkpoint(tmp_path, jax_cache):
  port = _free_port()
  args = ("--config.num_train_steps=6", "--config.checkpoint_every_steps=3",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2")
  processes = [
      subprocess.Popen(train_command(tmp_path, *args, f"--process_id={i}"), cwd=REPO,
                       text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env=subprocess_env(jax_cache))
      for i in range(2)]
  logs = [p.communicate(timeout=600)[1] for p in processes]
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-5000:]
  assert "2 device(s) on 2 host(s)" in logs[0]
  assert checkpoint_steps(tmp_path) == [3, 6]
  results = read_results(tmp_path)
  assert results["final"]["num_examples"] == 360  # Each host evaluated its half, exactly.
  # One process restores the two-process checkpoint and gets the same validation numbers.
  evaluation = run_eval(jax_cache, tmp_path, "--checkpoint=latest")
  assert evaluation["num_examples"] == 360
  assert evaluation["top1"] == results["final"]["top1"]
  assert evaluation["top5"] == results["final"]["top5"]
  assert evaluation["loss"] == pytest.approx(results["final"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_fine_tuning_from_an_upstream_pth_keeps_the_backbone_and_reinitialises_the_classifier(
    tmp_path, jax_cache):
  """An upstream-layout 100-class MobileNetV1 (w0.25, CIFAR stem, SRAP) as .pth, fine-tuned on
  digits with a learning rate of 1e-30 (validation refuses 0): every backbone weight ends
  equal to the source's (within 1e-25); the 10-class classifier starts fresh and the log
  says so."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from rap_flax import spec, weights  # pylint: disable=g-import-not-at-top
  from rap_flax.pytorch import models as torch_models  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  source = torch_models.create_model("mobilenetv1", 100, "srap", width_multiplier=0.25,
                                     cifar=True)
  pth = tmp_path / "imagenet100.pth"
  torch.save({"model_state_dict": source.state_dict()}, pth)
  workdir = tmp_path / "run"
  result = run_train(jax_cache, workdir, "--config.model.attention=srap",
                     f"--config.init_from={pth}", "--config.learning_rate=1e-30",
                     "--config.warmup_epochs=0", "--config.num_train_steps=2")
  reinitialised = [line for line in result.stderr.splitlines() if "Re-initialised" in line]
  assert len(reinitialised) == 2 and all("classifier" in line for line in reinitialised)
  taken, total = map(int, re.search(r"Initialised (\d+) of (\d+) variables from",
                                    result.stderr).groups())
  assert taken == total - 2  # all but the classifier's kernel and bias
  trained = restored_params(workdir, 2)
  state = {k: v.numpy() for k, v in source.state_dict().items()}
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  for path, value in traverse_util.flatten_dict(trained).items():
    key = weights.torch_key("params", path, spec.GATES["srap"])
    if path[0] == "classifier":
      assert value.shape[-1] == 10
      continue
    expected = np.transpose(state[key], (2, 3, 1, 0)) if value.ndim == 4 else (
        state[key].T if value.ndim == 2 else state[key])
    np.testing.assert_allclose(value, expected, rtol=0, atol=1e-25, err_msg=key)


@pytest.mark.slow
def test_resuming_wins_over_init_from(tmp_path, jax_cache):
  workdir = tmp_path / "run"
  run_train(jax_cache, workdir, "--config.num_train_steps=2")
  result = run_train(jax_cache, workdir, "--config.num_train_steps=4",
                     f"--config.init_from={tmp_path / 'nonexistent.pth'}")
  assert "Restored checkpoint of step 2" in result.stderr
  assert checkpoint_steps(workdir)[-1] == 4
