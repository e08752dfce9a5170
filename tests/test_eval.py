"""eval.py: reproduces the training's validation numbers from orbax and PyTorch checkpoints."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.test_train import (DIGITS, REPO, TINY, jax_cache, read_results,  # noqa: F401
                              run_eval, run_train, subprocess_env, tiny_config)

# batch 128: 11 steps per epoch on digits' 1,437 training images, so 3 epochs give three
# evaluations (and checkpoints with a validation score) in 33 steps.
RUN = ("--config.batch_size=128", "--config.num_epochs=3", "--config.keep_checkpoints=1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, jax_cache) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("trained")
  run_train(jax_cache, workdir, *RUN)
  return workdir


@pytest.mark.slow
def test_latest_checkpoint_reproduces_the_final_validation_numbers(trained, jax_cache):
  results = read_results(trained)
  evaluation = run_eval(jax_cache, trained, "--checkpoint=latest")
  assert evaluation["step"] == results["step"] == 33
  for name in ("loss", "top1", "top5", "num_examples"):
    assert evaluation[name] == results["final"][name], name
  assert evaluation["num_examples"] == 360


@pytest.mark.slow
def test_best_checkpoint_is_the_default(trained, jax_cache):
  results = read_results(trained)
  evaluation = run_eval(jax_cache, trained)
  assert evaluation["checkpoint"] == "best"
  assert evaluation["step"] == results["best_step"]
  assert evaluation["top1"] == results["best_val_top1"]


@pytest.mark.slow
def test_eight_devices_count_every_example_once(trained, jax_cache):
  """The padded last batch is split over 8 devices; the masks keep the counts exact."""
  output = trained / "eval_8_devices.json"
  result = subprocess.run(
      [sys.executable, str(REPO / "eval.py"), f"--config={DIGITS}", f"--workdir={trained}",
       "--checkpoint=latest", f"--output={output}", *TINY],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=subprocess_env(jax_cache, devices=8))
  assert result.returncode == 0, result.stderr[-5000:]
  evaluation, final = json.loads(output.read_text()), read_results(trained)["final"]
  assert evaluation["num_examples"] == 360
  assert (evaluation["top1"], evaluation["top5"]) == (final["top1"], final["top5"])
  assert evaluation["loss"] == pytest.approx(final["loss"], rel=1e-6)


@pytest.mark.slow
def test_torch_checkpoint_evaluates_like_the_orbax_one(trained, tmp_path, jax_cache):
  from rap_flax import data, models, weights  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  model = models.from_config(config, data.num_classes(config.data))
  variables = weights.load_variables(str(trained), model, checkpoint="latest")
  path = tmp_path / "model_best.pth"
  weights.save_state_dict(variables, model, str(path))

  evaluation = run_eval(jax_cache, trained, f"--weights={path}")
  final = read_results(trained)["final"]
  assert evaluation["source"] == str(path)
  for name in ("loss", "top1", "top5", "num_examples"):
    assert evaluation[name] == final[name], name


@pytest.mark.slow
def test_missing_or_unknown_checkpoints_are_explained(tmp_path, trained):
  from rap_flax.training import evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(FileNotFoundError, match="No weights at .*empty"):
    evaluate.evaluate_checkpoint(tiny_config(), str(tmp_path / "empty"))
  (tmp_path / "exists").mkdir()
  with pytest.raises(FileNotFoundError, match="holds no checkpoints.*train first"):
    evaluate.evaluate_checkpoint(tiny_config(), str(tmp_path / "exists"))
  with pytest.raises(ValueError, match=r"No checkpoint of step 7 .*saved steps: \[.*33\]"):
    evaluate.evaluate_checkpoint(tiny_config(), str(trained), which="7")
  with pytest.raises(ValueError, match="use one of"):
    evaluate.evaluate_checkpoint(tiny_config(), str(trained), which="first")
