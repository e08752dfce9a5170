"""Access to the upstream golden cases copied from ../shared/golden into tests/data."""

import json
import pathlib

import jax
import numpy as np
import pytest

from rap_flax import models

DATA = pathlib.Path(__file__).parent / "data"
CASES = json.loads((DATA / "cases.json").read_text())
CASE_NAMES = [case["name"] for case in CASES]
# The first case runs in the quick tier (-m "not slow"), the others in the full suite only.
CASE_NAMES_FIRST_QUICK = [pytest.param(name, marks=() if index == 0 else pytest.mark.slow)
                          for index, name in enumerate(CASE_NAMES)]
# docs/upstream.md §3: torch sum(p.numel()) of the upstream models, 120 classes, w=1, 224, heavy head.
UPSTREAM_PARAMETER_COUNTS = [
    ("mobilenetv1", ("avg", "std"), (0.5, 0.5), 3_685_352),
    ("mobilenetv2", ("avg", "std"), (0.5, 0.5), 2_952_000),
    ("mobilenetv3_large", ("avg", "std"), (0.5, 0.5), 3_223_626),
    ("mobilenetv1", ("avg", "std", "max"), (0.3, 0.5, 0.2), 3_685_989),
    ("mobilenetv2", ("avg", "std", "max"), (0.3, 0.5, 0.2), 2_952_833),
    ("mobilenetv3_large", ("avg", "std", "max"), (0.3, 0.5, 0.2), 3_224_018),
]


def case(name: str) -> dict:
  return next(c for c in CASES if c["name"] == name)


def build_model(c: dict, **overrides):
  settings = dict(arch=c["arch"], num_classes=c["num_classes"], attention=c["attention"],
                  pool_types=c["pool_types"], rates=c["rates"],
                  width_multiplier=c["width_multiplier"], cifar=c["cifar"],
                  lightweight_head=c["lightweight_head"])
  settings.update(overrides)
  return models.create_model(**settings)


def checkpoint_path(name: str) -> pathlib.Path:
  return DATA / f"{name}.pth"


def arrays(name: str) -> dict:
  with np.load(DATA / f"{name}.npz") as npz:
    return dict(npz)


def upstream_state_dict(name: str) -> dict:
  """The model's state dict exactly as the upstream script saved it, `module.` stripped."""
  import torch
  checkpoint = torch.load(checkpoint_path(name), weights_only=True)
  state = checkpoint.get("model_state_dict", checkpoint.get("state_dict"))
  return {k.removeprefix("module."): v for k, v in state.items()}


def logits(model, variables, images):
  """(eval-mode logits, train-mode logits) from one jitted call."""
  def both(variables, images):
    train_logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return model.apply(variables, images, train=False), train_logits
  return jax.jit(both)(variables, images)


def assert_logits_close(actual, expected, relative=1e-4):
  """|diff| <= relative * max(1, |logit|); 1e-4 is the acceptance tolerance for parity."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  bound = relative * np.maximum(1.0, np.abs(expected))
  excess = np.abs(actual - expected) - bound
  assert np.all(excess <= 0), f"max |diff| over bound: {excess.max():.3g}"
