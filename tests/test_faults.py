"""Faults a user meets: damaged checkpoints, corrupt images, command-line mistakes, outputs."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import fake_sources
from tests.test_train import (DIGITS, REPO, RESUME_ARGS, RESUME_STEPS, TINY,  # noqa: F401
                              _interrupt, checkpoint_steps, jax_cache, read_results, run_train,
                              subprocess_env, train_command, uninterrupted)

NEWEST = RESUME_STEPS  # the uninterrupted run checkpoints 12, 16 and 20


def run(jax_cache, *command, home=None, cwd=REPO) -> subprocess.CompletedProcess:
  env = subprocess_env(jax_cache)
  if home is not None:
    env["HOME"] = str(home)
  return subprocess.run([sys.executable, *map(str, command)], cwd=cwd, capture_output=True,
                        text=True, env=env, timeout=600)


def eval_command(workdir, *args):
  return [REPO / "eval.py", f"--config={DIGITS}", f"--workdir={workdir}", *TINY, *args]


def truncate_data_files(step_dir: pathlib.Path) -> None:
  for path in step_dir.rglob("*"):
    if path.is_file() and path.parent.name == "d":  # orbax's array data files
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / "_CHECKPOINT_METADATA").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate_data_files, delete_metadata],
                         ids=["truncated", "no_metadata"])
def test_damaged_newest_step_is_skipped_by_eval_and_resume(damage, uninterrupted, tmp_path,
                                                            jax_cache):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  os.remove(workdir / "results.json")
  damage(workdir / "checkpoints" / str(NEWEST))

  evaluation = run(jax_cache, *eval_command(workdir, "--checkpoint=latest"))
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  warnings = [line for line in evaluation.stderr.splitlines()
              if f"Checkpoint step {NEWEST} " in line and "cannot be read" in line]
  assert len(warnings) == 1 and "Traceback" not in evaluation.stderr
  assert "(step 16)" in evaluation.stdout

  explicit = run(jax_cache, *eval_command(workdir, f"--checkpoint={NEWEST}"))
  assert explicit.returncode == 2 and "Traceback" not in explicit.stderr
  assert f"error: Checkpoint step {NEWEST} in" in explicit.stderr

  resumed = run(jax_cache, *train_command(workdir, *RESUME_ARGS)[1:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Restored checkpoint of step 16" in resumed.stderr
  assert (workdir / "checkpoints" / f"damaged-{NEWEST}").is_dir()  # kept, not deleted
  assert read_results(workdir)["step"] == RESUME_STEPS
  assert checkpoint_steps(workdir)[-1] == RESUME_STEPS


@pytest.mark.slow
def test_finished_workdir_says_so_and_exits_zero(uninterrupted, jax_cache):
  result = run(jax_cache, *train_command(uninterrupted, *RESUME_ARGS)[1:])
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"already complete at step {RESUME_STEPS}" in result.stderr


@pytest.mark.slow
def test_eval_prints_its_numbers_before_a_failed_write(uninterrupted, tmp_path, jax_cache):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result = run(jax_cache, *eval_command(uninterrupted, f"--output={blocker}/eval.json"))
  assert result.returncode == 2
  assert result.stdout.startswith("top1=")
  assert "could not write" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_corrupt_jpeg_is_reported_by_prepare_and_never_reaches_training(tmp_path, jax_cache):
  """A fake 120-class Stanford Dogs source with one corrupt JPEG, given with ~ paths."""
  home = tmp_path / "home"
  synsets = [f"n02{85620 + c:06d}-Breed_{c}" for c in range(120)]
  images, train, test = {}, [], []
  for c, synset in enumerate(synsets):
    for k in range(2):
      path = f"{synset}/{synset.split('-')[0]}_{k}.jpg"
      images[path] = fake_sources.flat_jpeg((c, 100, 50), shape=(24, 24))
      (train if k == 0 else test).append(path)
  corrupt = train[7]
  images[corrupt] = images[corrupt][:200]  # a JPEG cut short: the header, no image data
  fake_sources.write_stanford_dogs_source(str(home / "dogs"), images,
                                          {"train": train, "test": test}, layout="upstream")
  work = tmp_path / "cwd"
  work.mkdir()
  prepared = run(jax_cache, "-m", "rap_flax.data.prepare", "stanford_dogs",
                 "--source=~/dogs", "--data_dir=~/tfds", home=home, cwd=work)
  assert prepared.returncode == 0, prepared.stderr[-3000:]
  assert corrupt in prepared.stdout  # the file is named
  assert (home / "tfds" / "stanford_dogs").is_dir() and not (work / "~").exists()
  assert corrupt in (home / "tfds" / "stanford_dogs_skipped.txt").read_text()

  trained = run(jax_cache, REPO / "train.py", f"--config={DIGITS}", f"--workdir={tmp_path / 'w'}",
                "--config.data.dataset=stanford_dogs", f"--config.data.data_dir={home / 'tfds'}",
                "--config.data.image_size=32", "--config.batch_size=16",
                "--config.eval_batch_size=40", "--config.model.attention=none",
                "--config.model.depthwise_implementation=grouped",
                "--config.num_train_steps=8", "--config.log_every_steps=4")
  assert trained.returncode == 0, trained.stderr[-3000:]
  results = read_results(tmp_path / "w")
  assert results["final"]["num_examples"] == 120  # the test split is intact
  assert "119 train" in trained.stderr  # the corrupt training image was left out

  strict = run(jax_cache, "-m", "rap_flax.data.prepare", "stanford_dogs", "--source=~/dogs",
               "--data_dir=~/strict", "--strict", home=home, cwd=work)
  assert strict.returncode == 2 and "cannot be decoded" in strict.stderr
  assert "Traceback" not in strict.stderr


def _random_pth(tmp_path: pathlib.Path) -> pathlib.Path:
  path = tmp_path / "random.pth"
  path.write_bytes(np.random.default_rng(0).bytes(2048))
  return path


@pytest.mark.parametrize("mistake, expected", [
    (lambda tmp: ["train.py", f"--config={DIGITS}", f"--workdir={tmp}", "--config.lernin_rate=1"],
     "Unknown config field --config.lernin_rate; did you mean --config.learning_rate?"),
    (lambda tmp: ["train.py", "--config=configs/nonexistent.py", f"--workdir={tmp}"],
     "configs/nonexistent.py does not exist"),
    (lambda tmp: ["train.py", f"--config={DIGITS}", f"--workdir={tmp}",
                  "--config.model.attention=eca"], "Unknown attention 'eca'"),
    (lambda tmp: ["train.py", f"--config={DIGITS}", f"--workdir={tmp}",
                  "--config.data.dataset=stanford_dogs", f"--config.data.data_dir={tmp}/none"],
     "python -m rap_flax.data.prepare stanford_dogs"),
    (lambda tmp: ["eval.py", f"--config={DIGITS}", f"--workdir={tmp}"], "train first"),
    (lambda tmp: ["eval.py", f"--config={DIGITS}", f"--weights={tmp}/missing.pth"],
     "No weights at"),
    (lambda tmp: ["eval.py", f"--config={DIGITS}", f"--weights={_random_pth(tmp)}"],
     "not written by torch.save"),
    (lambda tmp: ["train.py", f"--config={DIGITS}", f"--workdir={tmp}",
                  "--config.dataset=cifar10"], "did you mean --config.data.dataset?"),
    (lambda tmp: ["train.py", f"--config={REPO / 'configs'}", f"--workdir={tmp}"],
     f"--config={REPO / 'configs'} is a directory; pass a config file"),
    (lambda tmp: ["train.py", f"--config={DIGITS}", f"--workdir={tmp}",
                  "--config.batch_size=abc"], "--config.batch_size=abc: invalid literal"),
], ids=["unknown_field", "missing_config", "unknown_attention", "unprepared_dataset",
        "empty_workdir", "missing_pth", "random_pth", "moved_field", "config_directory",
        "bad_override_value"])
def test_command_line_mistakes_get_one_clear_line(mistake, expected, tmp_path, jax_cache):
  command = mistake(tmp_path)
  result = run(jax_cache, REPO / command[0], *command[1:])
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  message = result.stderr[result.stderr.rindex("error: "):].strip().splitlines()
  assert len(message) <= 2 and expected in " ".join(message), message


def test_verbose_shows_the_traceback(tmp_path, jax_cache):
  result = run(jax_cache, REPO / "eval.py", f"--config={DIGITS}",
               f"--weights={tmp_path}/missing.pth", "--verbose")
  assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.slow
def test_tilde_in_workdir_is_expanded(tmp_path, jax_cache):
  home = tmp_path / "home"
  home.mkdir()
  result = run(jax_cache, REPO / "train.py", f"--config={DIGITS}", "--workdir=~/run", *TINY,
               "--config.num_train_steps=1", "--config.model.depthwise_implementation=grouped",
               home=home, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((home / "run" / "results.json").read_text())["step"] == 1
  assert not (tmp_path / "~").exists()


@pytest.mark.slow
def test_the_training_log_is_quiet_readable_and_ends_with_the_results(tmp_path, jax_cache):
  """Config as `key = value` differences, one model line (the table goes to the workdir), no
  backend probing or oneDNN notices, the ETA only after the first (compiling) step, each
  metric once (no copies from clu's logging writer, no [Hyperparameters] line), periodic
  checkpoints announced, and a closing line with the results."""
  env = subprocess_env(jax_cache)
  del env["JAX_PLATFORMS"]  # let jax probe its backends, as on a user's machine
  workdir = tmp_path / "quiet"
  result = subprocess.run(train_command(workdir, "--config.num_train_steps=5",
                                        "--config.checkpoint_every_steps=2"), cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stderr
  for noise in ("libtpu", "backend 'tpu'", "TPU", "cudart", "CUDA", "plugin", "oneDNN",
                "!!python", "| Name"):
    assert noise not in log, noise
  assert "Config (differences from the defaults):\n  batch_size = 32\n" in log
  assert len([line for line in log.splitlines() if "parameters in" in line]) == 1
  assert "backbone/data_bn/scale" in (workdir / "parameters.txt").read_text()
  etas = [line for line in log.splitlines() if "ETA" in line]
  assert etas and all("Step 1/" not in line for line in etas)
  assert len(log.splitlines()) < 40, log
  lines = log.strip().splitlines()
  count = lambda text: len([line for line in lines if text in line])
  assert count("[Hyperparameters]") == count("logging_writer") == 0
  assert count("): train loss") == count("): val top-1") == 1  # 5 steps: one log, one eval
  assert count("Saving checkpoint at step") == 2  # steps 2 and 4; the eval's own is not
  assert max(map(len, lines)) < 400
  results = read_results(workdir)
  assert lines[-1].endswith(
      f"Done: best val top-1 {100 * results['best_val_top1']:.2f}% (step 5), final "
      f"{100 * results['final']['top1']:.2f}% (step 5); results in {workdir}/results.json; "
      f"curves: tensorboard --logdir {workdir}")


# ------------------------------------------------------------------ one trainer per workdir


def _start_and_wait_for_the_loop(jax_cache, workdir, *overrides) -> subprocess.Popen:
  """A trainer that has taken the workdir's lock and entered its step loop."""
  process = subprocess.Popen(train_command(workdir, *overrides), cwd=REPO, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=subprocess_env(jax_cache))
  process.log = []
  for line in process.stderr:
    process.log.append(line)
    if "Checkpoints go to" in line:
      return process
  process.wait()
  raise AssertionError("".join(process.log)[-3000:])


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_the_first_finishes_with_its_own_results(tmp_path,
                                                                                 jax_cache):
  workdir = tmp_path / "run"
  first = _start_and_wait_for_the_loop(jax_cache, workdir, "--config.num_train_steps=12")
  first.send_signal(signal.SIGSTOP)  # holds the lock for as long as the second one needs
  try:
    second = run_train(jax_cache, workdir, "--config.num_train_steps=16",
                       "--config.learning_rate=0.01", expect_ok=False)
  finally:
    first.send_signal(signal.SIGCONT)
  log = "".join(first.log) + first.stderr.read()
  assert first.wait(timeout=300) == 0, log[-3000:]
  assert second.returncode == 2, second.stderr[-3000:]
  message = second.stderr[second.stderr.rindex("error: "):].strip().splitlines()
  assert len(message) == 1 and "Traceback" not in second.stderr
  assert message[0].startswith(f"error: {workdir} is in use by another trainer (host "
                               f"{socket.gethostname()}, pid {first.pid}, started ")
  assert "train in another --workdir" in message[0]
  assert read_results(workdir)["step"] == 12  # the first run's, untouched by the second
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
  assert not (workdir / "train.lock").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_trainer_does_not_block_the_next_run(tmp_path, jax_cache):
  workdir = tmp_path / "run"
  killed = _start_and_wait_for_the_loop(jax_cache, workdir, "--config.num_train_steps=200")
  killed.kill()
  killed.wait()
  assert json.loads((workdir / "train.lock").read_text())["pid"] == killed.pid
  result = run_train(jax_cache, workdir, "--config.num_train_steps=4")
  takeover = [line for line in result.stderr.splitlines() if "Taking over" in line]
  assert len(takeover) == 1 and f"pid {killed.pid}" in takeover[0], result.stderr[-3000:]
  assert read_results(workdir)["step"] == 4


# ------------------------------------------------------------------------------ Ctrl-C


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130_without_a_traceback(uninterrupted, tmp_path,
                                                                     jax_cache):
  stopped = _interrupt(jax_cache, tmp_path, signal.SIGINT)
  assert stopped.returncode == 130, stopped.log[-3000:]
  assert "Traceback" not in stopped.log and "KeyboardInterrupt" not in stopped.log
  stop_step = int(stopped.log.split("Stopped at step ")[1].split()[0])
  assert "on Ctrl-C; checkpoint saved" in stopped.log
  assert stop_step in checkpoint_steps(tmp_path) and 8 <= stop_step < RESUME_STEPS
  run_train(jax_cache, tmp_path, *RESUME_ARGS)
  assert read_results(tmp_path) == read_results(uninterrupted)


def test_ctrl_c_before_training_exits_130_without_a_traceback(tmp_path, jax_cache):
  process = subprocess.Popen(train_command(tmp_path), cwd=REPO, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=subprocess_env(jax_cache))
  log = []
  for line in process.stderr:
    log.append(line)
    if "Config (differences from the defaults)" in line:
      process.send_signal(signal.SIGINT)
      break
  log.extend(process.stderr)
  assert process.wait(timeout=300) == 130, "".join(log)[-3000:]
  assert "Traceback" not in "".join(log) and "Interrupted (Ctrl-C)" in log[-1]


# ---------------------------------------------------------------- full and read-only disks


def _namespace_problem() -> str | None:
  """Why `unshare --user --map-root-user --mount` cannot mount a tmpfs here (None: it can)."""
  if shutil.which("unshare") is None:
    return "no unshare command"
  probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                          "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True,
                         text=True)
  return None if probe.returncode == 0 else f"no user namespaces: {probe.stderr.strip()}"


needs_namespaces = pytest.mark.skipif(_namespace_problem() is not None,
                                      reason=str(_namespace_problem()))


def in_namespace(jax_cache, tmp_path, setup: str, **commands) -> dict:
  """Runs `setup` (mounts) and then each command inside a user and mount namespace; returns
  {name: (exit code, stdout + stderr)}."""
  lines = ["set -e", setup, "set +e"]
  for name, command in commands.items():
    quoted = " ".join(shlex.quote(str(part)) for part in command)
    lines.append(f"{quoted} > {tmp_path}/{name}.out 2>&1; echo $? > {tmp_path}/{name}.rc")
  subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                  "\n".join(lines)], cwd=REPO, env=subprocess_env(jax_cache), check=True,
                 timeout=900)
  return {name: (int((tmp_path / f"{name}.rc").read_text()),
                 (tmp_path / f"{name}.out").read_text()) for name in commands}


def assert_disk_error(code_and_output, path, cause):
  code, output = code_and_output
  assert code == 2, output[-3000:]
  assert "Traceback" not in output and "PermissionDeniedError" not in output, output[-3000:]
  message = output[output.rindex("error: "):].strip().splitlines()
  assert len(message) <= 2, message
  assert message[0].startswith(f"error: cannot write {path}") and f": {cause}." in message[0]


def _read_only(*directories) -> str:
  return "\n".join(f"mount --bind {d} {d}\nmount -o remount,ro,bind {d} {d}"
                   for d in directories)


@needs_namespaces
@pytest.mark.slow
def test_a_read_only_workdir_is_one_line_and_its_checkpoints_still_evaluate(
    uninterrupted, tmp_path, jax_cache):
  empty, finished = tmp_path / "empty", tmp_path / "finished"
  empty.mkdir()
  shutil.copytree(uninterrupted, finished)
  results = read_results(finished)
  out = tmp_path / "outputs"
  out.mkdir()
  python = sys.executable
  ran = in_namespace(
      jax_cache, out, _read_only(empty, finished),
      empty=[python, *train_command(empty)[1:]],
      extend=[python, *train_command(finished, "--config.num_train_steps=24")[1:]],
      same=[python, *train_command(finished, *RESUME_ARGS)[1:]],
      eval=[python, *eval_command(finished, "--checkpoint=latest", f"--output={out}/e.json")])
  assert_disk_error(ran["empty"], empty, "Read-only file system")
  assert_disk_error(ran["extend"], finished, "Read-only file system")
  assert ran["same"][0] == 0 and "already complete" in ran["same"][1], ran["same"][1][-3000:]
  assert ran["eval"][0] == 0, ran["eval"][1][-3000:]
  assert json.loads((out / "e.json").read_text())["top1"] == results["final"]["top1"]


@needs_namespaces
def test_prepare_into_a_read_only_data_dir_is_one_line(tmp_path, jax_cache):
  from tests.test_data_prepare import make_dogs_source  # pylint: disable=g-import-not-at-top
  make_dogs_source(tmp_path / "source", "tars")
  read_only = tmp_path / "read_only"
  read_only.mkdir()
  ran = in_namespace(jax_cache, tmp_path, _read_only(read_only), prepare=[
      sys.executable, "-m", "rap_flax.data.prepare", "stanford_dogs",
      f"--source={tmp_path / 'source'}", f"--data_dir={read_only / 'tfds'}"])
  assert_disk_error(ran["prepare"], read_only / "tfds", "Read-only file system")


@needs_namespaces
def test_a_full_disk_at_start_is_one_line(tmp_path, jax_cache):
  workdir = tmp_path / "full"
  workdir.mkdir()
  ran = in_namespace(jax_cache, tmp_path, f"mount -t tmpfs -o size=8k tmpfs {workdir}",
                     train=[sys.executable, *train_command(workdir)[1:]])
  assert_disk_error(ran["train"], workdir, "No space left on device")


# Inside the namespace: trains until the first checkpoint is complete, fills the disk, lets
# the run fail, evaluates the checkpoints left, frees the space and runs the same command.
_FILL_WHILE_CHECKPOINTING = textwrap.dedent("""
    import json, os, subprocess, sys, time
    workdir, report, command, evaluation = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), \\
        json.loads(sys.argv[4])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", workdir], check=True)
    run = lambda c: subprocess.run(c, capture_output=True, text=True)
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "4")):
      time.sleep(0.05)
    with open(os.path.join(workdir, "filler"), "wb", buffering=0) as filler:
      try:
        while True:
          filler.write(bytes(1 << 16))
      except OSError:  # full
        pass
    failed = trainer.communicate()[0]
    left = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
                  if p.isdigit())
    evaluated = run(evaluation)
    os.remove(os.path.join(workdir, "filler"))
    resumed = run(command)
    print(json.dumps({"failed": [trainer.returncode, failed], "left": left,
                      "evaluated": [evaluated.returncode, evaluated.stdout + evaluated.stderr],
                      "resumed": [resumed.returncode, resumed.stdout + resumed.stderr],
                      "results": json.load(open(os.path.join(workdir, "results.json")))
                                 if resumed.returncode == 0 else None}))
""")


@needs_namespaces
@pytest.mark.slow
def test_a_disk_that_fills_while_checkpointing_keeps_the_older_checkpoints(tmp_path, jax_cache):
  workdir = tmp_path / "filling"
  workdir.mkdir()
  command = train_command(workdir, "--config.num_train_steps=40",
                          "--config.checkpoint_every_steps=4")
  evaluation = [sys.executable, *eval_command(workdir, "--checkpoint=latest",
                                              f"--output={tmp_path}/eval.json")]
  result = subprocess.run(
      ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c",
       _FILL_WHILE_CHECKPOINTING, str(workdir), str(tmp_path), json.dumps(command),
       json.dumps([str(part) for part in evaluation])],
      cwd=REPO, env=subprocess_env(jax_cache), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert_disk_error(report["failed"], workdir / "checkpoints", "No space left on device")
  assert report["left"] and report["left"][-1] < 40, report["left"]
  assert report["evaluated"][0] == 0, report["evaluated"][1][-3000:]
  assert f"(step {report['left'][-1]})" in report["evaluated"][1]
  assert report["resumed"][0] == 0, report["resumed"][1][-3000:]
  assert report["results"]["step"] == 40


# -------------------------------------------------------------------- a new user's first hour


@pytest.mark.parametrize("command", [["train.py"], ["eval.py"], ["-m", "rap_flax.convert"],
                                     ["-m", "rap_flax.data.prepare"]],
                         ids=["train", "eval", "convert", "prepare"])
def test_help_exits_zero_and_shows_config(command, jax_cache):
  entry = [REPO / command[0]] if command[0].endswith(".py") else command
  result = run(jax_cache, *entry, "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "--config:" in result.stdout and "--[no]verbose:" in result.stdout


def test_a_missing_required_flag_is_a_usage_error(jax_cache):
  result = run(jax_cache, REPO / "train.py", f"--config={DIGITS}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      "error: flag --workdir=None: Flag --workdir must have a value other than None. "
      "(--help lists the flags)"]


@pytest.mark.slow
def test_the_converter_prints_its_result_and_little_else(uninterrupted, tmp_path, jax_cache):
  env = subprocess_env(jax_cache)
  del env["JAX_PLATFORMS"]  # let jax probe its backends (the libtpu line), as for a user
  output = tmp_path / "converted"
  result = subprocess.run([sys.executable, "-m", "rap_flax.convert", "to-flax",
                           f"--input={uninterrupted}", f"--output={output}"], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = (result.stdout + result.stderr).strip().splitlines()
  assert len(lines) <= 5, lines
  assert result.stdout.startswith(f"Converted {uninterrupted} (step {RESUME_STEPS}) -> {output}")


@pytest.mark.slow
def test_eval_of_a_converter_directory_writes_beside_it_and_says_where(uninterrupted, tmp_path,
                                                                       jax_cache):
  from rap_flax import weights  # pylint: disable=g-import-not-at-top
  converted = tmp_path / "converted"
  step, variables, model_spec = weights.workdir.Checkpoints(
      uninterrupted, read_only=True).restore_variables("latest")
  weights.save_flax_directory(variables, model_spec, str(converted))
  before = sorted(p.name for p in converted.iterdir())
  result = run(jax_cache, REPO / "eval.py", f"--config={DIGITS}", f"--weights={converted}",
               *TINY)
  assert result.returncode == 0, result.stderr[-3000:]
  written = tmp_path / "eval_converted.json"
  assert result.stdout.strip().splitlines()[-1] == f"Wrote {written}"
  assert sorted(p.name for p in converted.iterdir()) == before  # nothing added inside
  evaluation = json.loads(written.read_text())
  assert "checkpoint" not in evaluation  # "best" means nothing for a converter directory
  assert evaluation["top1"] == read_results(uninterrupted)["final"]["top1"]
  assert step == RESUME_STEPS


@pytest.mark.slow
def test_load_model_returns_the_workdirs_model_and_variables(uninterrupted):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import rap_flax  # pylint: disable=g-import-not-at-top
  model, variables = rap_flax.load_model(str(uninterrupted), checkpoint="latest")
  assert (model.model_spec.arch, model.model_spec.num_classes) == ("mobilenetv1", 10)
  expected = rap_flax.load_variables(str(uninterrupted), model, checkpoint="latest")
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  logits = model.apply(variables, jnp.zeros((2, 16, 16, 3)), train=False)
  assert logits.shape == (2, 10)
  with pytest.raises(ValueError, match="does not record its model.*load_variables"):
    rap_flax.load_model(str(_random_pth(uninterrupted.parent)))


def test_eval_checks_the_model_against_the_dataset(tmp_path, jax_cache):
  torch = pytest.importorskip("torch")
  from rap_flax.pytorch import models as torch_models  # pylint: disable=g-import-not-at-top
  nc12 = tmp_path / "nc12.pth"
  torch.save({"model_state_dict": torch_models.create_model(
      "mobilenetv1", 12, "none", width_multiplier=0.25, cifar=True).state_dict()}, nc12)
  result = run(jax_cache, REPO / "eval.py", f"--config={DIGITS}", f"--weights={nc12}", *TINY,
               "--config.model.num_classes=12")
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: config.model.num_classes=12, but 'digits' has 10 classes; unset it (None: the "
      "dataset's) or evaluate on a dataset with as many classes.")
  assert "top1=" not in result.stdout and not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_the_demo_explains_its_chance_level_early_validation(tmp_path, jax_cache):
  """The demo's first evaluations are at chance (10%) while training is at 25% and more
  (measured and explained: benchmarks/demo_batchnorm.py, README 'Early validation'); the log
  says why, once."""
  env = subprocess_env(jax_cache)
  # The demo as a user runs it: XLA's default optimisation (the tests' level 0 changes the
  # floating-point order, and this early trajectory is sensitive to it).
  env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_backend_optimization_level=0", "")
  process = subprocess.Popen(
      [sys.executable, str(REPO / "train.py"), f"--config={DIGITS}", f"--workdir={tmp_path}"],
      cwd=REPO, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
  log = []
  try:
    for line in process.stderr:
      log.append(line)
      if "BatchNorm on its running statistics" in line or "Step 88 (epoch 4.00)" in line:
        break
  finally:
    process.kill()
    process.wait()
  note = log[-1]
  assert "so early validation can trail training by far" in note, "".join(log)[-3000:]
  validation, train = log[-2], [line for line in log if "): train loss" in line][-1]
  val_top1 = float(validation.split("): val top-1 ")[1].split("%")[0])
  train_top1 = float(train.split(", top-1 ")[1].split("%")[0])
  assert val_top1 < 0.5 * train_top1 and val_top1 <= 11.0, (validation, train)
