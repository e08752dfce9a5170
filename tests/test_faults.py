"""Faults a user meets: damaged checkpoints, corrupt images, command-line mistakes, outputs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import fake_sources
from tests.test_train import (DIGITS, REPO, RESUME_ARGS, RESUME_STEPS, TINY,  # noqa: F401
                              checkpoint_steps, jax_cache, read_results, run_train,
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
], ids=["unknown_field", "missing_config", "unknown_attention", "unprepared_dataset",
        "empty_workdir", "missing_pth", "random_pth", "moved_field"])
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
def test_start_up_is_quiet_and_writes_the_parameter_table(tmp_path, jax_cache):
  """Config as `key = value` differences, one model line (the table goes to the workdir), no
  backend probing or oneDNN notices, and the ETA only after the first (compiling) step."""
  env = subprocess_env(jax_cache)
  del env["JAX_PLATFORMS"]  # let jax probe its backends, as on a user's machine
  workdir = tmp_path / "quiet"
  result = subprocess.run(train_command(workdir, "--config.num_train_steps=5"), cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  log = result.stderr
  for noise in ("libtpu", "backend 'tpu'", "oneDNN", "!!python", "| Name"):
    assert noise not in log, noise
  assert "Config (differences from the defaults):\n  batch_size = 32\n" in log
  assert len([line for line in log.splitlines() if "parameters in" in line]) == 1
  assert "backbone/data_bn/scale" in (workdir / "parameters.txt").read_text()
  etas = [line for line in log.splitlines() if "ETA" in line]
  assert etas and all("Step 1/" not in line for line in etas)
  assert len(log.splitlines()) < 40, log
