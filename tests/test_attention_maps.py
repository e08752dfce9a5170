"""The attention-map API returns, per gate, exactly what that gate computes in the forward pass."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_flax import models, spec
from rap_flax.layers import attention


def _init(model, images):
  return jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(images)


@pytest.mark.slow
def test_blocks_and_shapes_follow_the_architecture():
  model = models.create_model("mobilenetv3_large", 5, "srap", width_multiplier=0.25)
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)
  maps = models.attention_maps(model, _init(model, images), images)
  # Gated units of V3-large: stage3 (3), stage4 units 5-6, stage5 (3).
  assert list(maps) == ["stage3.unit1", "stage3.unit2", "stage3.unit3", "stage4.unit5",
                        "stage4.unit6", "stage5.unit1", "stage5.unit2", "stage5.unit3"]
  # The gate sits after the depthwise conv, so stride-2 units show their output size.
  assert maps["stage3.unit1"]["spatial_weight"].shape == (2, 8, 8)
  assert maps["stage4.unit5"]["pixel_weight"].shape == (2, 4, 4)
  assert maps["stage5.unit1"]["pixel_weight"].shape == (2, 2, 2)


@pytest.mark.parametrize("gate_name", ["srap", "mafc", "cbam", "se"])
def test_maps_equal_the_gate_output_over_its_input(gate_name):
  """The sown maps are the factors the gate multiplies its input by."""
  model_spec = spec.ModelSpec("mobilenetv1", 10, gate_name, ("std", "avg", "max"),
                              None if gate_name == "mafc" else (0.3, 0.5, 0.2))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 5, 32)), jnp.float32)

  class Probe(nn.Module):
    @nn.compact
    def __call__(self, x):
      return attention.build_gate(model_spec, name="gate")(x, train=False)

  probe = Probe()
  variables = probe.init(jax.random.key(0), x)
  out, state = probe.apply(variables, x, mutable=["intermediates"])
  sown = state["intermediates"]["gate"]
  pixel_weight = sown["pixel_weight"][0]
  assert pixel_weight.shape == (2, 6, 5)
  # The gated tensor is the input times a weight; its channel mean is pixel_weight.
  np.testing.assert_allclose(pixel_weight, jnp.mean(out / x, axis=-1), rtol=1e-5)
  if gate_name == "srap":
    assert np.all(pixel_weight >= 1) and np.all(pixel_weight <= 2)  # 1 + sigmoid(...)
  if gate_name == "se":
    assert "spatial_weight" not in sown
  else:
    assert sown["spatial_weight"][0].shape == (2, 6, 5)
