"""Flax models against the upstream PyTorch code: golden logits, parameter counts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rap_flax import models, spec, weights
from rap_flax.layers import attention
from tests import golden


@pytest.mark.parametrize("name", golden.CASE_NAMES_FIRST_QUICK)
def test_golden_logits_eval_and_train_mode(name):
  case = golden.case(name)
  model = golden.build_model(case)
  variables = weights.load_variables(str(golden.checkpoint_path(name)), model)
  data = golden.arrays(name)
  images = data["input_nchw"].transpose(0, 2, 3, 1)
  eval_logits, train_logits = golden.logits(model, variables, images)
  golden.assert_logits_close(eval_logits, data["eval_logits"])
  golden.assert_logits_close(train_logits, data["train_logits"])


@pytest.mark.parametrize("name", golden.CASE_NAMES)
def test_golden_parameter_count(name):
  case = golden.case(name)
  shapes = weights.variable_shapes(golden.build_model(case))
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes["params"])) == case["num_params"]


@pytest.mark.parametrize("arch, pool_types, rates, expected", golden.UPSTREAM_PARAMETER_COUNTS)
def test_parameter_counts_equal_upstream(arch, pool_types, rates, expected):
  model = models.create_model(arch, 120, "srap", pool_types, rates)
  shapes = weights.variable_shapes(model)
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes["params"])) == expected


def test_registry_lists_every_arch_and_attention():
  assert models.list_models() == ["mobilenetv1", "mobilenetv2", "mobilenetv3_large",
                                  "mobilenetv3_small"]
  assert models.list_attentions() == ["none", "srap", "mrap", "mafc", "se", "cbam"]


def test_top_n_counts_truncate_like_python():
  assert spec.top_n_counts(100, (0.29, 0.71)) == (28, 72)
  assert spec.top_n_counts(10, (0.3, 0.5, 0.2)) == (3, 5, 2)
  assert spec.top_n_counts(36, (0.5, 0.5)) == (18, 18)


def test_interleave_unequal_counts_appends_tails_in_pool_order():
  first = jnp.array([[1.0, 5.0, 3.0, 4.0]])
  second = jnp.array([[10.0, 20.0, 30.0, 40.0]])
  third = jnp.array([[-1.0, -2.0, -3.0, -4.0]])
  ranked = attention.interleave_top_n([first, second, third], (2, 1, 1))
  np.testing.assert_array_equal(ranked, [[5.0, 40.0, -1.0, 4.0]])
  ranked = attention.interleave_top_n([first, second], (1, 3))
  np.testing.assert_array_equal(ranked, [[5.0, 40.0, 30.0, 20.0]])


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="resnet50"), "Unknown arch"),
    (dict(attention="transformer"), "Unknown attention"),
    (dict(pool_types=("avg", "median")), "Unknown pool type"),
    (dict(pool_types=("avg",), rates=(1.0,)), "2 or 3 distinct"),
    (dict(pool_types=("avg", "std"), rates=(0.3, 0.5, 0.2)), "one fraction per pool type"),
    (dict(pool_types=("avg", "std", "max"), rates=(0.5, 0.5, 0.2)), "sum to 1.2 > 1"),
    (dict(dtype="int8"), "Unknown dtype"),
    (dict(num_classes=0), "num_classes"),
])
def test_invalid_settings_raise_clear_errors(kwargs, message):
  settings = dict(arch="mobilenetv1", num_classes=10, attention="srap")
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    models.create_model(**settings)


def test_std_pooling_on_1x1_feature_map_is_rejected():
  model = models.create_model("mobilenetv1", 10, "srap", width_multiplier=0.25)
  with pytest.raises(ValueError, match="'std' pooling over a 1x1 feature map"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   jnp.zeros((1, 32, 32, 3)))


def test_nchw_input_is_rejected_with_hint():
  model = models.create_model("mobilenetv1", 10, "none", width_multiplier=0.25)
  with pytest.raises(ValueError, match="transpose NCHW"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                   jnp.zeros((1, 3, 64, 64)))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_tracks_float32_logits():
  name = "srap_v3l_w05"
  case = golden.case(name)
  data = golden.arrays(name)
  images = data["input_nchw"].transpose(0, 2, 3, 1)
  model = golden.build_model(case, dtype="bfloat16")
  variables = weights.load_variables(str(golden.checkpoint_path(name)), model)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  assert logits.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables["params"]))
  reference = data["eval_logits"]
  # bfloat16 keeps ~3 significant digits per op; measured correlation here is 0.994.
  assert np.corrcoef(np.ravel(logits), np.ravel(reference))[0, 1] > 0.97
  assert np.array_equal(np.argmax(logits, -1), np.argmax(reference, -1))


@pytest.mark.slow
def test_upstream_init_scheme():
  model = models.create_model("mobilenetv1", 10, "srap", width_multiplier=0.5, cifar=True)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
      jnp.zeros((2, 32, 32, 3)))
  params = variables["params"]
  stem = np.asarray(params["backbone"]["init_conv"]["conv"]["kernel"])
  assert np.abs(stem).max() <= np.sqrt(6 / 27) and np.abs(stem).max() > 0.8 * np.sqrt(6 / 27)
  gate = params["backbone"]["stage3"]["unit2"]["attention"]
  hidden = np.asarray(gate["mlp_hidden"]["kernel"])
  assert 0.005 < hidden.std() < 0.02 and not np.any(np.asarray(gate["mlp_hidden"]["bias"]))
  bn = params["backbone"]["stage3"]["unit2"]["conv_pw"]["bn"]
  assert np.all(np.asarray(bn["scale"]) == 1) and not np.any(np.asarray(bn["bias"]))
  classifier = np.asarray(params["classifier"]["conv"]["kernel"])
  assert classifier.std() == pytest.approx(np.sqrt(2 / (512 + 10)), rel=0.1)


def test_std_pooling_matches_the_plain_two_pass_std_and_its_gradient():
  """The gates' std (with its guard for constant maps): value and gradient are those of the
  textbook formula, jnp.std with ddof=1."""
  maps = 3.0 + jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 7))
  for axis in ((1, 2), -1):
    reference = lambda x, axis=axis: jnp.std(x, axis=axis, ddof=1)  # noqa: E731
    np.testing.assert_allclose(attention.pool(maps, "std", axis), reference(maps), rtol=1e-5)
    weights = jax.random.normal(jax.random.PRNGKey(1), reference(maps).shape)
    grad = jax.grad(lambda x: jnp.sum(weights * attention.pool(x, "std", axis)))(maps)
    expected = jax.grad(lambda x: jnp.sum(weights * reference(x)))(maps)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)


def test_std_pooling_of_constant_maps_has_finite_gradients():
  """Black borders give zero-variance maps; sqrt' is infinite there, the step must not NaN."""
  maps = jnp.zeros((2, 4, 4, 3)).at[1, :2].set(jnp.arange(24.0).reshape(2, 4, 3))
  for axis in ((1, 2), -1):
    std = attention.pool(maps, "std", axis)
    grads = jax.grad(lambda x: jnp.sum(attention.pool(x, "std", axis)))(maps)
    assert bool(jnp.all(jnp.isfinite(grads)))
    np.testing.assert_array_equal(grads[0], 0.0)
    np.testing.assert_allclose(std, jnp.std(maps, axis=axis, ddof=1), rtol=1e-6)
