"""A gate registered from outside the package works in both frameworks and in the converter."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rap_flax import models, spec, weights  # noqa: E402
from rap_flax.pytorch import models as torch_models  # noqa: E402

TOY = spec.Gate("toy", "toy_gate", children={"proj": "fc"},
                flax_module=f"{__name__}:ToyFlaxGate", torch_module=f"{__name__}:ToyTorchGate")


class ToyFlaxGate(nn.Module):
  """x * sigmoid(Dense(mean over H, W)), NHWC."""
  model_spec: spec.ModelSpec

  @nn.compact
  def __call__(self, x, train):
    del train
    weight = nn.sigmoid(nn.Dense(x.shape[-1], name="proj")(jnp.mean(x, axis=(1, 2))))
    return x * weight[:, None, None, :].astype(x.dtype)


class ToyTorchGate(torch.nn.Module):
  """The same gate on NCHW tensors."""

  def __init__(self, model_spec, channels):
    super().__init__()
    del model_spec
    self.fc = torch.nn.Linear(channels, channels)

  def forward(self, x):
    return x * torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


@pytest.fixture
def toy_gate():
  spec.register_gate(TOY)
  yield TOY
  del spec.GATES[TOY.name]


def test_a_gate_registered_from_outside_builds_both_frameworks(toy_gate):
  model_spec = spec.ModelSpec("mobilenetv1", 5, toy_gate.name, width_multiplier=0.25, cifar=True)
  assert toy_gate.name in models.list_attentions()
  reference = torch_models.create_model(model_spec).eval()
  state = reference.state_dict()
  assert "backbone.stage1.unit1.toy_gate.fc.weight" in state
  model = models.create_model(model_spec)
  variables = weights.load_variables(state, model)  # every Flax variable has its torch key
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  with torch.no_grad():
    expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-5)


def test_registering_an_inconsistent_gate_is_refused():
  with pytest.raises(ValueError, match="already registered"):
    spec.register_gate(spec.Gate("srap", "OTHER"))
  with pytest.raises(ValueError, match="together"):
    spec.register_gate(spec.Gate("half", "half", flax_module="x:Y"))
