"""Converter: both upstream formats, safetensors, round trips, the CLI, and refusals."""

import os
import pickle

import jax
import numpy as np
import pytest
import torch

from rap_flax import convert, models
from tests import golden


@pytest.mark.parametrize("name", golden.CASE_NAMES)
def test_round_trip_gives_identical_state_dict(name):
  model = golden.build_model(golden.case(name))
  variables = convert.load_torch_checkpoint(str(golden.checkpoint_path(name)), model)
  exported = convert.to_torch_state_dict(variables, model)
  original = golden.upstream_state_dict(name)
  assert set(exported) == set(original)
  for key, tensor in original.items():
    assert exported[key].shape == tensor.shape, key
    assert exported[key].dtype == tensor.dtype, key
    assert torch.equal(exported[key], tensor), key


def test_safetensors_and_bare_state_dict_load_like_the_checkpoint(tmp_path):
  name = "srap_v1_w025_cifar"
  model = golden.build_model(golden.case(name))
  reference = convert.load_torch_checkpoint(str(golden.checkpoint_path(name)), model)
  bare = tmp_path / "bare.pt"
  torch.save(golden.upstream_state_dict(name), bare)
  wrapped_safetensors = tmp_path / "model.safetensors"
  convert.save_torch_checkpoint(reference, model, str(wrapped_safetensors))
  for path in (bare, wrapped_safetensors):
    loaded = convert.load_torch_checkpoint(str(path), model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, reference)


def test_wrong_architecture_lists_missing_unexpected_and_mismatched_keys():
  name = "srap_v1_w025_cifar"
  wrong_arch = golden.build_model(golden.case(name), arch="mobilenetv2")
  with pytest.raises(convert.CheckpointMismatchError) as error:
    convert.load_torch_checkpoint(str(golden.checkpoint_path(name)), wrong_arch)
  message = str(error.value)
  assert "missing keys" in message and "backbone.stage1.unit1.conv1.conv.weight" in message
  assert "unexpected keys" in message and "backbone.stage1.unit1.conv_dw.conv.weight" in message
  wrong_classes = golden.build_model(golden.case(name), num_classes=100)
  with pytest.raises(convert.CheckpointMismatchError, match=r"shape mismatches \(2\)"):
    convert.load_torch_checkpoint(str(golden.checkpoint_path(name)), wrong_classes)


def test_truncated_file_is_reported(tmp_path):
  source = golden.checkpoint_path("srap_v1_w025_cifar").read_bytes()
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(source[: len(source) // 2])
  model = golden.build_model(golden.case("srap_v1_w025_cifar"))
  with pytest.raises(ValueError, match="truncated"):
    convert.load_torch_checkpoint(str(truncated), model)
  truncated_safetensors = tmp_path / "truncated.safetensors"
  truncated_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
  with pytest.raises(ValueError, match="truncated"):
    convert.load_torch_checkpoint(str(truncated_safetensors), model)


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
    convert.load_torch_checkpoint(str(malicious), model)
  assert not marker.exists()


def test_missing_file_and_non_state_dict():
  model = golden.build_model(golden.case("srap_v1_w025_cifar"))
  with pytest.raises(FileNotFoundError, match="No checkpoint file"):
    convert.load_torch_checkpoint("/nonexistent/model.pth", model)


def test_cli_round_trip_through_orbax(tmp_path, capsys):
  name = "mafc_v1_w025_imagenet_fmt"
  case = golden.case(name)
  flags = ["--arch", case["arch"], "--num_classes", str(case["num_classes"]),
           "--attention", "mafc", "--width_multiplier", str(case["width_multiplier"]),
           "--lightweight_head"]
  orbax_dir = tmp_path / "orbax"
  convert.main(["to-flax", "--input", str(golden.checkpoint_path(name)),
                "--output", str(orbax_dir)] + flags)
  exported = tmp_path / "exported.pth"
  convert.main(["to-torch", "--input", str(orbax_dir), "--output", str(exported)] + flags)
  assert "286,635 parameters" in capsys.readouterr().out
  state = torch.load(exported, weights_only=True)["model_state_dict"]
  original = golden.upstream_state_dict(name)
  assert set(state) == set(original)
  assert all(torch.equal(state[k], original[k]) for k in original)
  wrong = models.create_model("mobilenetv1", 10, "mafc", width_multiplier=0.25)
  with pytest.raises(convert.CheckpointMismatchError):
    convert.load_flax_variables(str(orbax_dir), wrong)


def test_cli_reads_the_model_from_a_config_file(tmp_path):
  name = "srap_v1_w025_cifar"
  config_file = tmp_path / "config.py"
  config_file.write_text(
      "from rap_flax.training import config_lib\n"
      "def get_config():\n"
      "  config = config_lib.base_config()\n"
      "  config.dataset = 'digits'  # 10 classes, like the golden case\n"
      "  config.model.arch = 'mobilenetv1'\n"
      "  config.model.width_multiplier = 0.25\n"
      "  config.model.cifar = True\n"
      "  config.model.lightweight_head = True\n"
      "  return config\n")
  exported = tmp_path / "model.safetensors"
  convert.main(["to-flax", "--input", str(golden.checkpoint_path(name)),
                "--output", str(tmp_path / "orbax"), "--config", str(config_file)])
  convert.main(["to-torch", "--input", str(tmp_path / "orbax"), "--output", str(exported),
                "--config", str(config_file)])
  from safetensors.numpy import load_file
  state = load_file(exported)
  original = golden.upstream_state_dict(name)
  assert set(state) == set(original)
  assert all(np.array_equal(state[k], original[k].numpy()) for k in original)
