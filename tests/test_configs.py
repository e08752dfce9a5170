"""Every shipped config is complete and valid; bad fields fail with a message naming the fix."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from rap_flax import data, models
from rap_flax.training import config_lib

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")


def _load(name: str, *args):
  return _flags_config(name + (f":{args[0]}" if args else ""))


def _flags_config(spec: str, *overrides: str):
  """Parses a config the way train.py does (config_flags), with command-line overrides."""
  argv = ["prog", f"--config={CONFIG_DIR / spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def test_the_expected_configs_ship():
  assert {"dogs_srap.py", "dogs_mrap.py", "imagenet_mafc.py", "imagenet100_srap.py",
          "cifar100_srap.py", "digits_srap.py"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_and_documented(name):
  config = _load(name)
  config_lib.validate_config(config)
  spec = importlib.util.spec_from_file_location(name[:-3], CONFIG_DIR / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.__doc__ and len(module.__doc__.strip()) > 40, "docstring says what it reproduces"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_its_model(name):
  config = _load(name)
  model = models.from_config(config, data.num_classes(config.data))
  size = 64 if config.model.cifar else 96
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))
  assert set(shapes) == {"params", "batch_stats"}


def test_recipes_follow_the_spec():
  dogs = _load("dogs_srap.py")
  assert (dogs.data.dataset, dogs.model.arch, dogs.model.attention) == (
      "stanford_dogs", "mobilenetv3_large", "srap")
  assert tuple(dogs.model.pool_types) == ("avg", "std") and tuple(dogs.model.rates) == (0.5, 0.5)
  assert not dogs.model.lightweight_head
  assert (dogs.batch_size, dogs.learning_rate, dogs.momentum, dogs.weight_decay,
          dogs.num_epochs) == (64, 0.1, 0.9, 1e-4, 200)
  assert (dogs.lr_schedule, tuple(dogs.lr_milestones), dogs.lr_decay_factor) == (
      "multistep", (100, 150, 180), 0.1)
  mrap = _load("dogs_mrap.py")
  assert (mrap.model.attention, tuple(mrap.model.pool_types), tuple(mrap.model.rates)) == (
      "mrap", ("avg", "std", "max"), (0.3, 0.5, 0.2))
  imagenet = _load("imagenet_mafc.py")
  assert (imagenet.data.dataset, imagenet.model.arch, imagenet.model.attention) == (
      "imagenet2012", "mobilenetv1", "mafc")
  assert (imagenet.batch_size, imagenet.num_epochs, imagenet.lr_schedule,
          imagenet.lr_step_epochs) == (256, 100, "step", 30)
  assert _load("imagenet_mafc.py", "mobilenetv3_large").model.arch == "mobilenetv3_large"
  assert _load("imagenet100_srap.py").data.dataset == "imagenet_rein100"
  cifar = _load("cifar100_srap.py")
  assert (cifar.data.dataset, cifar.data.image_size, cifar.model.cifar) == ("cifar100", 32, True)


def test_command_line_overrides_apply():
  config = _flags_config("digits_srap.py", "--config.learning_rate=0.05",
                         "--config.model.arch=mobilenetv2",
                         "--config.model.pool_types=('avg','std','max')")
  assert config.learning_rate == 0.05 and config.model.arch == "mobilenetv2"
  assert tuple(config.model.pool_types) == ("avg", "std", "max")


def test_unknown_field_on_the_command_line_names_the_fix():
  with pytest.raises(AttributeError, match='Did you mean "learning_rate"'):
    _flags_config("digits_srap.py", "--config.learnin_rate=0.05")


def test_unknown_field_in_a_config_names_the_fix():
  config = config_lib.base_config()
  config.model.widht_multiplier = 0.5
  with pytest.raises(ValueError, match=r"model.widht_multiplier.*did you mean "
                     r"'model.width_multiplier'"):
    config_lib.validate_config(config)


@pytest.mark.parametrize("field, value, message", [
    ("lr_schedule", "linear", "lr_schedule='linear' is unknown"),
    ("init_from_checkpoint", "newest", "init_from_checkpoint='newest'"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("lr_milestones", (150, 100), "increasing"),
])
def test_bad_values_are_rejected(field, value, message):
  config = config_lib.base_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate_config(config)


def test_bad_compute_dtype_is_rejected():
  config = config_lib.base_config()
  config.model.dtype = "float64"
  with pytest.raises(ValueError, match="model.dtype='float64' is unknown"):
    config_lib.validate_config(config)


def test_a_recipe_that_extends_another_loads_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = _flags_config("imagenet100_srap.py:mobilenetv2")
  assert (config.data.dataset, config.model.arch) == ("imagenet_rein100", "mobilenetv2")
