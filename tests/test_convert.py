"""Weights in and out: upstream formats, safetensors, round trips, the CLI, ONNX, refusals."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from rap_flax import convert, models, spec, weights
from rap_flax.pytorch import models as torch_models
from tests import golden
from tests.test_train import jax_cache, run_train  # noqa: F401  (fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory, jax_cache) -> pathlib.Path:  # noqa: F811
  workdir = tmp_path_factory.mktemp("trained_tiny")
  run_train(jax_cache, workdir, "--config.num_train_steps=4", "--config.model.attention=srap")
  return workdir


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "rap_flax.convert", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("name", golden.CASE_NAMES)
def test_round_trip_gives_identical_state_dict(name):
  model = golden.build_model(golden.case(name))
  variables = weights.load_variables(str(golden.checkpoint_path(name)), model)
  exported = weights.to_state_dict(variables, model)
  original = golden.upstream_state_dict(name)
  assert set(exported) == set(original)
  for key, tensor in original.items():
    assert exported[key].shape == tuple(tensor.shape), key
    assert exported[key].dtype == tensor.numpy().dtype, key
    np.testing.assert_array_equal(exported[key], tensor.numpy(), err_msg=key)


def test_safetensors_and_bare_state_dict_load_like_the_checkpoint(tmp_path):
  name = "srap_v1_w025_cifar"
  model = golden.build_model(golden.case(name))
  reference = weights.load_variables(str(golden.checkpoint_path(name)), model)
  bare = tmp_path / "bare.pt"
  torch.save(golden.upstream_state_dict(name), bare)
  safetensors = tmp_path / "model.safetensors"
  weights.save_state_dict(reference, model, str(safetensors))
  for path in (bare, safetensors):
    loaded = weights.load_variables(str(path), model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, reference)


def test_wrong_architecture_lists_missing_unexpected_and_mismatched_keys():
  name = "srap_v1_w025_cifar"
  wrong_arch = golden.build_model(golden.case(name), arch="mobilenetv2")
  with pytest.raises(weights.CheckpointMismatchError) as error:
    weights.load_variables(str(golden.checkpoint_path(name)), wrong_arch)
  message = str(error.value)
  assert "missing" in message and "backbone.stage1.unit1.conv1.conv.weight" in message
  assert "unexpected" in message and "backbone.stage1.unit1.conv_dw.conv.weight" in message
  wrong_classes = golden.build_model(golden.case(name), num_classes=100)
  with pytest.raises(weights.CheckpointMismatchError, match=r"shape mismatches \(2\)"):
    weights.load_variables(str(golden.checkpoint_path(name)), wrong_classes)


def test_truncated_or_foreign_files_are_reported(tmp_path):
  source = golden.checkpoint_path("srap_v1_w025_cifar").read_bytes()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(source[: len(source) // 2])
  model = golden.build_model(golden.case("srap_v1_w025_cifar"))
  with pytest.raises(ValueError, match="truncated"):
    weights.load_variables(str(truncated), model)
  random_bytes = tmp_path / "random.pth"
  random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(ValueError, match="not written by torch.save"):
    weights.load_variables(str(random_bytes), model)
  truncated_safetensors = tmp_path / "truncated.safetensors"
  truncated_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
  with pytest.raises(ValueError, match="truncated"):
    weights.load_variables(str(truncated_safetensors), model)


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
  marker = tmp_path / "pwned"
  malicious = tmp_path / "malicious.pth"
  torch.save({"model_state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(str(marker))},
             malicious, pickle_protocol=2)
  model = golden.build_model(golden.case("srap_v1_w025_cifar"))
  with pytest.raises(ValueError, match="Refusing to load"):
    weights.load_variables(str(malicious), model)
  assert not marker.exists()


def test_missing_file():
  model = golden.build_model(golden.case("srap_v1_w025_cifar"))
  with pytest.raises(FileNotFoundError, match="No weights at /nonexistent/model.pth"):
    weights.load_variables("/nonexistent/model.pth", model)


def _flax_logits(model, variables, images_nhwc):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images_nhwc))


def test_converter_directory_records_its_model_and_round_trips(tmp_path):
  name = "mafc_v1_w025_imagenet_fmt"
  model = golden.build_model(golden.case(name))
  orbax_dir = tmp_path / "orbax"
  summary = convert.convert("to-flax", str(golden.checkpoint_path(name)), str(orbax_dir),
                            config=_config_for(golden.case(name)))
  assert "286,635 parameters" in summary
  # The directory says which model it holds: no config needed to read it back.
  exported = tmp_path / "exported.pth"
  convert.convert("to-torch", str(orbax_dir), str(exported))
  state = torch.load(exported, weights_only=True)["model_state_dict"]
  original = golden.upstream_state_dict(name)
  assert set(state) == set(original)
  assert all(torch.equal(state[k], original[k]) for k in original)
  wrong = models.create_model("mobilenetv1", 10, "mafc", width_multiplier=0.25)
  with pytest.raises(weights.CheckpointMismatchError):
    weights.load_variables(str(orbax_dir), wrong)
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert.convert("to-torch", str(orbax_dir), str(exported))
  assert sorted(os.listdir(tmp_path)) == ["exported.pth", "orbax"]  # nothing left behind
  convert.convert("to-torch", str(orbax_dir), str(exported), overwrite=True)


def _config_for(case):
  from rap_flax.training import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.model.update(arch=case["arch"], num_classes=case["num_classes"],
                      attention=case["attention"], pool_types=tuple(case["pool_types"]),
                      rates=tuple(case["rates"]) if case["rates"] else None,
                      width_multiplier=case["width_multiplier"], cifar=case["cifar"],
                      lightweight_head=case["lightweight_head"])
  return config


@pytest.mark.slow
def test_cli_takes_a_config_with_an_argument_and_overrides(tmp_path):
  """The README's configs/NAME.py:ARG form and --config.x=y work in the converter."""
  name = "mafc_v1_w025_imagenet_fmt"
  case = golden.case(name)
  output = tmp_path / "model.safetensors"
  result = run_cli("to-torch", f"--input={golden.checkpoint_path(name)}", f"--output={output}",
                   "--config=configs/imagenet_mafc.py:mobilenetv1",
                   f"--config.model.width_multiplier={case['width_multiplier']}",
                   f"--config.model.num_classes={case['num_classes']}",
                   "--config.model.lightweight_head=True")
  assert result.returncode == 0, result.stderr[-3000:]
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state, original = load_file(output), golden.upstream_state_dict(name)
  assert set(state) == set(original)
  assert all(np.array_equal(state[k], original[k].numpy()) for k in original)
  again = run_cli("to-torch", f"--input={golden.checkpoint_path(name)}", f"--output={output}",
                  "--config=configs/imagenet_mafc.py")
  assert again.returncode == 2 and "Traceback" not in again.stderr
  assert "exists; pass --overwrite" in again.stderr


@pytest.mark.slow
def test_to_torch_from_a_training_workdir_loads_strictly_and_matches(tmp_path, trained_tiny):
  """convert to-torch --input=WORKDIR: the upstream-layout model loads it with strict=True and
  computes the Flax model's eval logits."""
  output = tmp_path / "from_workdir.pth"
  result = run_cli("to-torch", f"--input={trained_tiny}", f"--output={output}",
                   "--checkpoint=latest")
  assert result.returncode == 0, result.stderr[-3000:]
  model_spec = weights.open_source(str(trained_tiny), None, "latest").model_spec
  torch_model = torch_models.create_model(model_spec)
  state = torch.load(output, weights_only=True)["model_state_dict"]
  torch_model.load_state_dict(state, strict=True)
  images = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    torch_logits = torch_model.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  variables = weights.load_variables(str(trained_tiny), checkpoint="latest")
  golden.assert_logits_close(_flax_logits(models.create_model(model_spec), variables, images),
                             torch_logits)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(spec.ARCHS))
def test_onnx_export_matches_flax_for_every_attention(arch, tmp_path):
  """One file per arch x attention, batches of 1 and 3 (dynamic batch), logits within 1e-4."""
  ort = pytest.importorskip("onnxruntime")
  from rap_flax.pytorch import onnx_export  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(0).uniform(size=(3, 32, 32, 3)).astype(np.float32)
  for attention in spec.ATTENTIONS:
    model_spec = spec.ModelSpec(arch, 5, attention, width_multiplier=0.25, cifar=True)
    # Weights come from a freshly initialised upstream-layout model (initialising the Flax
    # model op by op would cost seconds per model); one train-mode batch moves the BatchNorm
    # statistics off their initial values so the export has to carry them.
    torch.manual_seed(1)
    source = torch_models.create_model(model_spec).train()
    with torch.no_grad():
      source(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    variables = weights.load_variables(source.state_dict(), model_spec)
    path = tmp_path / f"{arch}_{attention}.onnx"
    onnx_export.export(variables, model_spec, str(path), image_size=32)
    session = ort.InferenceSession(str(path))
    model = models.create_model(model_spec, depthwise_implementation="grouped")
    flax_logits = _flax_logits(model, variables, images)  # eval mode: row i sees image i only
    for batch in (1, 3):
      (logits,) = session.run(None, {"images": images[:batch].transpose(0, 3, 1, 2)})
      golden.assert_logits_close(logits, flax_logits[:batch])


def test_onnx_cli_refuses_a_wrong_suffix(tmp_path):
  name = "srap_v1_w025_cifar"
  orbax_dir = tmp_path / "orbax"
  convert.convert("to-flax", str(golden.checkpoint_path(name)), str(orbax_dir),
                  config=_config_for(golden.case(name)))
  result = run_cli("to-onnx", f"--input={orbax_dir}", f"--output={tmp_path / 'model.pb'}")
  assert result.returncode == 2 and "ends in .onnx" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_onnx_of_a_workdir_takes_the_image_size_it_was_trained_at(tmp_path, trained_tiny):
  """No --image_size: the workdir's recorded config (16px) sets the graph's input size."""
  ort = pytest.importorskip("onnxruntime")
  output = tmp_path / "from_workdir.onnx"
  result = run_cli("to-onnx", f"--input={trained_tiny}", f"--output={output}",
                   "--checkpoint=latest")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "16px" in result.stdout
  session = ort.InferenceSession(str(output))
  assert session.get_inputs()[0].shape[1:] == [3, 16, 16]
  images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  (logits,) = session.run(None, {"images": images.transpose(0, 3, 1, 2)})
  variables = weights.load_variables(str(trained_tiny), checkpoint="latest")
  model_spec = weights.open_source(str(trained_tiny), None, "latest").model_spec
  golden.assert_logits_close(logits, _flax_logits(models.create_model(model_spec), variables,
                                                  images))


@pytest.mark.slow
def test_a_workdir_records_the_config_it_was_trained_with(trained_tiny):
  from rap_flax.training import config_lib  # pylint: disable=g-import-not-at-top
  from tests.test_train import tiny_config  # pylint: disable=g-import-not-at-top
  recorded = config_lib.flatten(config_lib.recorded_config(str(trained_tiny)))
  expected = config_lib.flatten(tiny_config(**{"num_train_steps": 4,
                                               "model.attention": "srap"}))
  assert recorded == expected
  assert all(type(recorded[k]) is type(v) for k, v in expected.items())
  assert config_lib.recorded_config(str(trained_tiny / "checkpoints")) is None
