"""The full set of config fields, their defaults, and validation.

Every config in configs/ starts from `base_config()` and changes what its recipe needs, so a
field that is not defined here is a typo: `validate_config` rejects it by name instead of
letting it be silently ignored.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
from ml_collections import config_dict

from rap_flax import data, files
from rap_flax import spec as spec_lib
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

  for name, allowed, test in _DOMAINS:
    value = given[name]
    if not _in_domain(value, test):
      raise ValueError(f"Invalid --config.{name}={value!r}: allowed {allowed}.")
  milestones = tuple(config.lr_milestones)
  if not all(_in_domain(m, _non_negative) for m in milestones) or (
      list(milestones) != sorted(milestones)):
    raise ValueError(f"Invalid --config.lr_milestones={milestones}: allowed increasing "
                     "epochs >= 0.")
  if config.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"lr_schedule={config.lr_schedule!r} is unknown; choose one of "
                     f"{LR_SCHEDULES}.")
  if config.model.dtype not in registry.DTYPES:
    raise ValueError(f"model.dtype={config.model.dtype!r} is unknown; choose one of "
                     f"{sorted(registry.DTYPES)}.")
  if not (config.init_from_checkpoint in workdir.CHECKPOINT_CHOICES or
          str(config.init_from_checkpoint).isdigit()):
    raise ValueError(f"init_from_checkpoint={config.init_from_checkpoint!r}: use one of "
                     f"{workdir.CHECKPOINT_CHOICES} or a step number.")


def _positive(value) -> bool:
  return value > 0


def _non_negative(value) -> bool:
  return value >= 0


def _at_least_one(value) -> bool:
  return value >= 1


def _unset_or_at_least_one(value) -> bool:
  return value is None or value >= 1


def _fraction(value) -> bool:
  return 0 <= value < 1


def _in_domain(value, test) -> bool:
  """`test(value)` for a finite number (None passes to `test`); NaN and inf never pass."""
  if value is None:
    return test(value)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  return math.isfinite(value) and test(value)


# Every numeric field's domain: (field, what is allowed, test). A value outside it is refused
# before anything runs, naming the field, the value and this range.
_DOMAINS = (
    ("seed", ">= 0", _non_negative),
    ("batch_size", ">= 1", _at_least_one),
    ("eval_batch_size", ">= 1", _at_least_one),
    ("num_epochs", "> 0 (fractions of an epoch too)", _positive),
    ("num_train_steps", "-1 (train num_epochs) or >= 1", lambda v: v == -1 or v >= 1),
    ("learning_rate", "> 0 (finite)", _positive),
    ("momentum", "[0, 1)", _fraction),
    ("weight_decay", ">= 0 (finite)", _non_negative),
    ("label_smoothing", "[0, 1)", _fraction),
    ("lr_step_epochs", ">= 1", _at_least_one),
    ("lr_decay_factor", "(0, 1]", lambda v: 0 < v <= 1),
    ("warmup_epochs", ">= 0 (finite)", _non_negative),
    ("log_every_steps", ">= 1", _at_least_one),
    ("eval_every_epochs", ">= 1", _at_least_one),
    ("checkpoint_every_steps", ">= 1", _at_least_one),
    ("keep_checkpoints", ">= 1", _at_least_one),
    ("model.num_classes", "None (the dataset's classes) or >= 1", _unset_or_at_least_one),
    ("model.width_multiplier", "> 0 (finite)", _positive),
    ("data.image_size", "None (the dataset's size) or >= 1; the model's minimum is checked "
     "with the dataset", _unset_or_at_least_one),
    ("data.shuffle_buffer_size", ">= 0", _non_negative),
    ("data.prefetch_batches", "-1 (tf.data.AUTOTUNE) or >= 0", lambda v: v >= -1),
    ("data.synthetic_num_classes", ">= 1", _at_least_one),
    ("data.synthetic_num_train", ">= 1", _at_least_one),
    ("data.synthetic_num_eval", ">= 1", _at_least_one),
)


def smallest_image_size(model_spec: spec_lib.ModelSpec) -> int:
  """The smallest square image `model_spec` accepts: 'std' pooling in a gate needs at least
  two pixels, so the last gated unit's map must be 2x2, i.e. an image larger than the stride
  product (each stride-2 layer makes ceil(size / 2)) up to that unit."""
  if not (model_spec.gate.uses_pool_types and "std" in model_spec.pool_types):
    return 1
  plan = model_spec.plan()
  stride, gated_stride = plan.init_stride, None
  for stage in plan.stages:
    for unit in stage:
      stride *= unit.stride
      if unit.gated:
        gated_stride = stride
  if plan.final_gate:
    gated_stride = stride
  return 1 if gated_stride is None else gated_stride + 1


def model_for_dataset(config: ml_collections.ConfigDict, info: data.DatasetInfo,
                      platform: str | None = None):
  """The model of `config` for the dataset `info` describes: its classes unless
  config.model.num_classes is set, and then they must agree. `platform`: the backend it is
  built for (see rap_flax.create_model)."""
  model = registry.from_config(config, info.num_classes, platform)
  if model.model_spec.num_classes != info.num_classes:
    raise ValueError(f"config.model.num_classes={model.model_spec.num_classes}, but "
                     f"{info.name!r} has {info.num_classes} classes; unset it (None: the "
                     "dataset's) or evaluate on a dataset with as many classes.")
  smallest = smallest_image_size(model.model_spec)
  if info.image_size < smallest:
    raise ValueError(
        f"Invalid --config.data.image_size={info.image_size}: allowed >= {smallest} for "
        f"{model.model_spec.arch}{' with the CIFAR stem' if model.model_spec.cifar else ''} + "
        f"{model.model_spec.attention}, whose 'std' pooling needs a 2x2 map after {smallest - 1}x "
        "downsampling.")
  return model


CONFIG_FILE = "config.json"  # in a workdir: the config its latest start trained with


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `config` to WORKDIR/config.json (atomically), every field under its dotted name."""
  with files.atomic_output(os.path.join(workdir, CONFIG_FILE)) as tmp, open(tmp, "w") as f:
    json.dump(flatten(config), f, indent=2, sort_keys=True)


def recorded_config(directory: str) -> ml_collections.ConfigDict | None:
  """The config that train.py last started the workdir `directory` with; None when it
  records none (not a workdir, or one written before 0.3)."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return _from_flat(json.load(f))


def _from_flat(flat: dict[str, Any]) -> ml_collections.ConfigDict:
  config = base_config()
  for name, value in flat.items():
    *parents, leaf = name.split(".")
    node = config
    for parent in parents:
      node = node.get(parent)
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      continue  # a field this version no longer has
    if isinstance(value, list):
      value = tuple(value)  # JSON has no tuples
    node[leaf] = value
  return config
