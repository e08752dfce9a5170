"""Nonsense configs are refused before anything runs: one line naming the field, the value
and what is allowed (validate_config), and the smallest image a model accepts."""

import math

import jax
import jax.numpy as jnp
import pytest

from rap_flax import data, models, spec
from rap_flax.config_fields import flatten
from rap_flax.training import config_lib
from tests.test_train import jax_cache, run_train, tiny_config  # noqa: F401


@pytest.mark.parametrize("field, value, allowed", [
    ("learning_rate", -0.1, "> 0"), ("learning_rate", 0.0, "> 0"),
    ("learning_rate", math.nan, "> 0"), ("learning_rate", math.inf, "> 0 (finite)"),
    ("momentum", math.nan, "[0, 1)"), ("momentum", 1.0, "[0, 1)"), ("momentum", -0.5, "[0, 1)"),
    ("weight_decay", -1e-4, ">= 0"), ("weight_decay", math.nan, ">= 0"),
    ("model.num_classes", 0, "None (the dataset's classes) or >= 1"),
    ("model.num_classes", -3, ">= 1"),
    ("data.image_size", 0, "None (the dataset's size) or >= 1"),
    ("data.image_size", -3, ">= 1"),
    ("batch_size", 0, ">= 1"), ("eval_batch_size", -8, ">= 1"),
    ("num_epochs", 0.0, "> 0"), ("num_epochs", math.nan, "> 0"),
    ("num_train_steps", 0, "-1 (train num_epochs) or >= 1"), ("num_train_steps", -5, ">= 1"),
    ("warmup_epochs", -1.0, ">= 0"), ("label_smoothing", 1.0, "[0, 1)"),
    ("lr_decay_factor", 0.0, "(0, 1]"), ("lr_decay_factor", 10.0, "(0, 1]"),
    ("lr_step_epochs", 0, ">= 1"), ("keep_checkpoints", 0, ">= 1"),
    ("log_every_steps", 0, ">= 1"), ("eval_every_epochs", 0, ">= 1"),
    ("checkpoint_every_steps", -1, ">= 1"), ("seed", -1, ">= 0"),
    ("model.width_multiplier", 0.0, "> 0"), ("model.width_multiplier", math.inf, "> 0"),
    ("data.synthetic_num_train", 0, ">= 1"), ("data.prefetch_batches", -2, ">= 0"),
])
def test_a_value_outside_its_domain_is_one_line_naming_field_value_and_range(field, value,
                                                                             allowed):
  config = config_lib.base_config()
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[leaf] = value
  with pytest.raises(ValueError) as refused:
    config_lib.validate_config(config)
  message = str(refused.value)
  assert message.startswith(f"Invalid --config.{field}={value!r}: allowed "), message
  assert allowed in message and "\n" not in message


def test_the_recipes_and_their_defaults_pass():
  config_lib.validate_config(config_lib.base_config())
  config_lib.validate_config(tiny_config())


def test_every_numeric_field_has_a_domain():
  """A numeric field added later without a domain would let nonsense through again."""
  domains = {name for name, _, _ in config_lib._DOMAINS}  # pylint: disable=protected-access
  numeric = {name for name, value in flatten(config_lib.base_config()).items()
             if (isinstance(value, (int, float)) and not isinstance(value, bool))}
  placeholders = {"model.num_classes", "data.image_size"}  # int fields that default to None
  assert numeric | placeholders <= domains, sorted(numeric | placeholders - domains)


@pytest.mark.parametrize("arch, attention, cifar, pool_types, smallest", [
    ("mobilenetv1", "srap", True, ("avg", "std"), 9),  # stride 8 to the last gated unit
    ("mobilenetv1", "srap", False, ("avg", "std"), 33),
    ("mobilenetv3_small", "srap", False, ("avg", "std"), 33),  # gate on the final conv
    ("mobilenetv2", "mafc", True, ("avg", "std"), 9),
    ("mobilenetv1", "srap", True, ("avg", "max"), 1),  # no 'std': any size
])
def test_smallest_image_size_follows_the_plan_strides(arch, attention, cifar, pool_types,
                                                      smallest):
  model_spec = spec.ModelSpec(arch, 10, attention, pool_types=pool_types,
                              width_multiplier=0.25, cifar=cifar)
  assert config_lib.smallest_image_size(model_spec) == smallest
  model = models.create_model(model_spec, depthwise_implementation="grouped")
  init = lambda size: jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((2, size, size, 3)), train=False))
  init(smallest)
  if smallest > 1:
    with pytest.raises(ValueError, match="'std' pooling over a 1x1 feature map"):
      init(smallest - 1)


def test_an_image_too_small_for_the_model_is_refused_with_the_dataset(tmp_path):
  config = tiny_config(**{"data.image_size": 8, "model.attention": "srap"})
  config_lib.validate_config(config)  # a positive size; the model's minimum needs the model
  with pytest.raises(ValueError, match=r"^Invalid --config.data.image_size=8: allowed >= 9 "
                     r"for mobilenetv1 with the CIFAR stem \+ srap"):
    config_lib.model_for_dataset(config, data.get_dataset_info(config.data))


@pytest.mark.parametrize("override, field", [
    ("--config.learning_rate=-0.1", "learning_rate=-0.1"),
    ("--config.momentum=nan", "momentum=nan"),
    ("--config.data.image_size=8", "data.image_size=8"),
])
def test_train_py_refuses_before_training(override, field, tmp_path, jax_cache):
  workdir = tmp_path / "run"
  result = run_train(jax_cache, workdir, "--config.model.attention=srap", override,
                     expect_ok=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  message = result.stderr[result.stderr.rindex("error: "):].strip().splitlines()
  assert len(message) == 1 and message[0].startswith(f"error: Invalid --config.{field}:")
  assert not (workdir / "checkpoints").exists() and "Step 1" not in result.stderr
