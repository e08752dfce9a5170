"""The full set of config fields, their defaults, and validation.

Every config in configs/ starts from `base_config()` and changes what its recipe needs, so a
field that is not defined here is a typo: `validate_config` rejects it by name instead of
letting it be silently ignored.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from rap_flax import data
from rap_flax.config_fields import closest, flatten, load_recipe
from rap_flax.models import registry
from rap_flax.weights import workdir

LR_SCHEDULES = ("constant", "multistep", "step", "cosine")


def base_config() -> ml_collections.ConfigDict:
  """Defaults for every field; a recipe overrides a subset."""
  config = ml_collections.ConfigDict()
  config.data = data.default_config()  # What rap_flax.data reads (and only that).
  config.seed = 0  # Seeds the parameter init, the shuffling and the augmentation.

  # Model (rap_flax.models.from_config).
  config.model = ml_collections.ConfigDict()
  config.model.arch = "mobilenetv1"
  config.model.num_classes = config_dict.placeholder(int)  # None = the dataset's classes.
  config.model.attention = "srap"
  config.model.pool_types = ("avg", "std")
  config.model.rates = (0.5, 0.5)  # srap/mrap only.
  config.model.width_multiplier = 1.0
  config.model.cifar = False  # Stride-1 stem for small images.
  config.model.lightweight_head = False  # MobileNetV3 without the 1280/1024 head conv.
  config.model.dtype = "float32"  # Compute dtype; params, BN stats and logits stay float32.
  # auto | grouped | shifted | shifted_vjp (rap_flax.layers.depthwise): speed and compile
  # time only; "auto" is the fastest measured on the backend.
  config.model.depthwise_implementation = "auto"

  # Starting weights (rap_flax.load_variables sources: a workdir, a converter directory, a
  # .pth or .safetensors file). Variables whose shapes differ (a classifier for another
  # number of classes) and those matching the regex init_from_exclude start from their
  # initial values. Resuming from the workdir's own checkpoints always wins.
  config.init_from = ""
  config.init_from_checkpoint = "best"  # best | latest | STEP, when init_from is a workdir.
  config.init_from_exclude = ""

  # Optimisation: torch.optim.SGD semantics (coupled weight decay on every parameter).
  config.batch_size = 64  # Global batch over all devices and hosts.
  config.eval_batch_size = 256  # Global; the last batch is padded and masked, not dropped.
  config.num_epochs = 200.0
  config.num_train_steps = -1  # > 0 overrides num_epochs (tests, smoke runs).
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4
  config.label_smoothing = 0.0
  # constant | multistep (x lr_decay_factor at each epoch in lr_milestones) |
  # step (x lr_decay_factor every lr_step_epochs) | cosine (to 0 at the end).
  config.lr_schedule = "multistep"
  config.lr_milestones = (100, 150, 180)
  config.lr_step_epochs = 30
  config.lr_decay_factor = 0.1
  config.warmup_epochs = 0.0  # Linear warmup from 0, before any of the schedules.

  # Loop, logging and checkpoints.
  config.log_every_steps = 100
  config.eval_every_epochs = 1  # Also evaluates after the last step.
  config.checkpoint_every_steps = 1000  # Plus one after every evaluation.
  config.keep_checkpoints = 3  # The last k are kept, plus the best by validation top-1.
  # jax's persistent compilation cache in WORKDIR/compilation_cache: a rerun or a resumed
  # run skips most of the compile.
  config.compilation_cache = True
  return config


def describe(config: ml_collections.ConfigDict) -> str:
  """`key = value` lines for the fields that differ from base_config() (all in config.json)."""
  defaults = flatten(base_config())
  lines = [f"  {name} = {value!r}" for name, value in sorted(flatten(config).items())
           if defaults.get(name, object()) != value]
  return "\n".join(lines) or "  (all defaults)"


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first problem (unknown field, bad value) and its fix."""
  known = flatten(base_config())
  given = flatten(config)
  unknown = sorted(set(given) - set(known))
  if unknown:
    hints = []
    for name in unknown:
      close = closest(name, known)
      hints.append(f"{name!r}" + (f" (did you mean {close!r}?)" if close else ""))
    raise ValueError(
        f"Unknown config field(s): {', '.join(hints)}. Fix the spelling or remove them; "
        "the known fields are defined in rap_flax/training/config_lib.py.")
  missing = sorted(set(known) - set(given))
  if missing:
    raise ValueError(
        f"Config lacks field(s) {missing}. Build configs from "
        "rap_flax.training.config_lib.base_config() so that every field has a default.")

  def check(ok: bool, message: str) -> None:
    if not ok:
      raise ValueError(message)

  check(config.lr_schedule in LR_SCHEDULES,
        f"lr_schedule={config.lr_schedule!r} is unknown; choose one of {LR_SCHEDULES}.")
  check(config.model.dtype in registry.DTYPES,
        f"model.dtype={config.model.dtype!r} is unknown; choose one of "
        f"{sorted(registry.DTYPES)}.")
  check(config.init_from_checkpoint in workdir.CHECKPOINT_CHOICES or
        str(config.init_from_checkpoint).isdigit(),
        f"init_from_checkpoint={config.init_from_checkpoint!r}: use one of "
        f"{workdir.CHECKPOINT_CHOICES} or a step number.")
  check(config.batch_size > 0 and config.eval_batch_size > 0,
        "batch_size and eval_batch_size must be positive.")
  check(config.num_train_steps > 0 or config.num_epochs > 0,
        "Set num_epochs > 0 or num_train_steps > 0.")
  check(0.0 <= config.label_smoothing < 1.0, "label_smoothing must be in [0, 1).")
  check(config.warmup_epochs >= 0, "warmup_epochs must be >= 0.")
  check(config.lr_schedule != "step" or config.lr_step_epochs > 0,
        "lr_step_epochs must be > 0 for lr_schedule='step'.")
  check(list(config.lr_milestones) == sorted(config.lr_milestones),
        f"lr_milestones must be increasing, got {tuple(config.lr_milestones)}.")
  check(config.keep_checkpoints >= 1, "keep_checkpoints must be >= 1.")
  check(config.log_every_steps >= 1 and config.checkpoint_every_steps >= 1
        and config.eval_every_epochs >= 1,
        "log_every_steps, checkpoint_every_steps and eval_every_epochs must be >= 1.")


def model_for_dataset(config: ml_collections.ConfigDict, info: data.DatasetInfo):
  """The model of `config` for the dataset `info` describes: its classes unless
  config.model.num_classes is set, and then they must agree."""
  model = registry.from_config(config, info.num_classes)
  if model.model_spec.num_classes != info.num_classes:
    raise ValueError(f"config.model.num_classes={model.model_spec.num_classes}, but "
                     f"{info.name!r} has {info.num_classes} classes; unset it (None: the "
                     "dataset's) or evaluate on a dataset with as many classes.")
  return model
