"""DepthwiseConv: every implementation against the grouped conv and against torch."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rap_flax.layers import depthwise
from rap_flax.layers.depthwise import DepthwiseConv

IMPLEMENTATIONS = depthwise.IMPLEMENTATIONS
ALTERNATIVES = tuple(name for name in IMPLEMENTATIONS if name != "grouped")

# (kernel, stride, height, width, channels): kernels 3/5/7, strides 1/2, odd and even
# (and mixed) spatial sizes, several channel counts.
CASES = (
    (3, 1, 9, 9, 4),
    (3, 2, 8, 10, 3),
    (5, 1, 8, 7, 2),
    (5, 2, 11, 9, 5),
    (7, 1, 7, 8, 3),
    (7, 2, 10, 10, 16),
)
# shifted_vjp's blocked kernel gradient with several rows per block and a shorter
# remainder block, (case, most rows per block): 19 rows of 3x3 taps at stride 1 in
# blocks of 16 + 3; 26 -> 13 rows at stride 2 in blocks of 12 + 1.
BLOCKED_CASES = (((3, 1, 19, 14, 3), 16), ((3, 2, 26, 25, 2), 12))


def _case_id(case):
  return "k{}s{}_{}x{}x{}".format(*case)


def _inputs(case, batch=2):
  kernel_size, _, height, width, channels = case
  rng = np.random.default_rng(abs(hash(case)) % 2**32)
  x = rng.standard_normal((batch, height, width, channels), dtype=np.float32)
  kernel = rng.standard_normal((kernel_size, kernel_size, 1, channels), dtype=np.float32)
  return x, kernel


@functools.lru_cache(maxsize=None)
def _jax_outputs(implementation, case):
  """(y, dx, dkernel) for a fixed random cotangent, as numpy."""
  stride = case[1]
  x, kernel = _inputs(case)
  conv = lambda x, k: depthwise.depthwise_conv(x, k, stride, implementation)
  y_shape = jax.eval_shape(conv, x, kernel).shape
  cotangent = np.random.default_rng(1).standard_normal(y_shape, dtype=np.float32)

  @jax.jit  # one compilation for the forward and backward pass
  def forward_backward(x, kernel, cotangent):
    y, vjp = jax.vjp(conv, x, kernel)
    return (y,) + vjp(cotangent)

  return tuple(np.asarray(a) for a in forward_backward(x, kernel, cotangent)) + (cotangent,)


def _torch_outputs(case, cotangent):
  kernel_size, stride, _, _, channels = case
  x, kernel = _inputs(case)
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  w_t = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).requires_grad_()  # (C,1,kh,kw)
  y = F.conv2d(x_t, w_t, stride=stride, padding=kernel_size // 2, groups=channels)
  dx, dw = torch.autograd.grad(y, (x_t, w_t), torch.from_numpy(cotangent.transpose(0, 3, 1, 2)))
  return (y.detach().numpy().transpose(0, 2, 3, 1), dx.numpy().transpose(0, 2, 3, 1),
          dw.numpy().transpose(2, 3, 1, 0))


def _assert_close(actual, expected, tol=1e-5, what=""):
  """Max abs error within tol of the expected magnitude (float32 sums reorder)."""
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(1.0, float(np.max(np.abs(expected))))
  error = float(np.max(np.abs(actual - expected)))
  assert error <= tol * scale, f"{what}: max abs error {error:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("implementation", ALTERNATIVES)
def test_matches_grouped_forward_and_gradients(implementation, case):
  got = _jax_outputs(implementation, case)
  want = _jax_outputs("grouped", case)
  for name, a, b in zip(("output", "input grad", "kernel grad"), got, want):
    _assert_close(a, b, what=name)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_torch_groups_conv(implementation, case):
  *got, cotangent = _jax_outputs(implementation, case)
  want = _torch_outputs(case, cotangent)
  for name, a, b in zip(("output", "input grad", "kernel grad"), got, want):
    _assert_close(a, b, what=name)


@pytest.mark.parametrize("case, max_rows", BLOCKED_CASES,
                         ids=lambda v: _case_id(v) if isinstance(v, tuple) else f"rows{v}")
def test_shifted_vjp_blocked_kernel_gradient_matches_grouped(monkeypatch, case, max_rows):
  monkeypatch.setattr(depthwise, "_MAX_BLOCK_ROWS", max_rows)
  rows = depthwise._output_size(case[2], case[0], case[0] // 2, case[1])
  block = depthwise._row_block(rows)
  assert 1 < block < rows and rows % block, (rows, block)
  got = _jax_outputs("shifted_vjp", case)  # shapes unique to this test: traced here
  want = _jax_outputs("grouped", case)
  for name, a, b in zip(("output", "input grad", "kernel grad"), got, want):
    _assert_close(a, b, what=name)


def test_stride_two_pads_symmetrically_unlike_flax_same():
  # Even size, stride 2: k//2 on both sides puts the first window at -1, 'SAME' at 0.
  x, kernel = _inputs((3, 2, 8, 8, 2))
  ours = depthwise.depthwise_conv(jnp.asarray(x), jnp.asarray(kernel), 2, "grouped")
  same = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=2)
  window = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, :3, :3, :]
  np.testing.assert_allclose(ours[:, 0, 0], np.sum(window * kernel[:, :, 0], axis=(1, 2)),
                             rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(ours) - np.asarray(same))) > 0.1


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_param_is_float32_kernel_kh_kw_1_c(implementation):
  x = jnp.ones((1, 6, 6, 5), jnp.bfloat16)
  module = DepthwiseConv(5, dtype=jnp.bfloat16, implementation=implementation)
  params = module.init(jax.random.key(0), x)["params"]
  assert set(params) == {"kernel"}
  assert params["kernel"].shape == (5, 5, 1, 5)
  assert params["kernel"].dtype == jnp.float32


def test_init_is_kaiming_uniform_and_identical_across_implementations():
  x = jnp.ones((1, 4, 4, 512))
  kernels = [DepthwiseConv(3, implementation=name).init(jax.random.key(3), x)["params"]["kernel"]
             for name in IMPLEMENTATIONS]
  for kernel in kernels[1:]:
    np.testing.assert_array_equal(kernel, kernels[0])
  bound = math.sqrt(6.0 / 9.0)  # gain sqrt(2), fan_in = kh * kw * 1
  values = np.asarray(kernels[0])
  assert np.max(np.abs(values)) <= bound
  assert np.max(np.abs(values)) > 0.95 * bound
  assert abs(np.std(values) - bound / math.sqrt(3.0)) < 0.05 * bound


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bfloat16_runs_and_is_close_to_float32(implementation):
  x, _ = _inputs((3, 2, 10, 9, 6))
  module = DepthwiseConv(3, strides=2, implementation=implementation)
  params = module.init(jax.random.key(0), x)["params"]

  @functools.partial(jax.jit, static_argnums=1)
  def output_and_kernel_grad(params, dtype):
    def loss(params):
      y = module.clone(dtype=dtype).apply({"params": params}, x)
      return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
    return jax.grad(loss, has_aux=True)(params)[::-1]

  y16, grad16 = output_and_kernel_grad(params, jnp.bfloat16)
  y32, grad32 = output_and_kernel_grad(params, jnp.float32)
  assert y16.dtype == jnp.bfloat16
  assert grad16["kernel"].dtype == jnp.float32
  _assert_close(np.asarray(y16, np.float32), np.asarray(y32), tol=2e-2, what="bf16 output")
  _assert_close(np.asarray(grad16["kernel"]), np.asarray(grad32["kernel"]), tol=5e-2,
                what="bf16 kernel grad")


def test_unknown_implementation_lists_valid_names():
  with pytest.raises(ValueError, match=r"'winograd'.*auto.*grouped.*shifted.*shifted_vjp"):
    DepthwiseConv(3, implementation="winograd").init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))


@pytest.mark.parametrize("bad_input, message", [
    (dict(kernel_size=3, strides=0), "strides"),
    (dict(kernel_size=0), "kernel_size"),
])
def test_bad_settings_raise(bad_input, message):
  with pytest.raises(ValueError, match=message):
    DepthwiseConv(**bad_input).init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))


def test_non_nhwc_input_raises():
  with pytest.raises(ValueError, match="NHWC"):
    DepthwiseConv(3).init(jax.random.key(0), jnp.ones((4, 4, 2)))


def test_auto_uses_the_backend_table():
  assert depthwise.resolve_implementation("auto") == (
      depthwise.DEFAULT_IMPLEMENTATION[jax.default_backend()])
  # Accelerators have native depthwise kernels; unknown backends get the portable conv.
  assert depthwise.resolve_implementation("auto", "gpu") == "grouped"
  assert depthwise.resolve_implementation("auto", "tpu") == "grouped"
  assert depthwise.resolve_implementation("auto", "some_new_backend") == "grouped"
  for backend, name in depthwise.DEFAULT_IMPLEMENTATION.items():
    assert name in IMPLEMENTATIONS, backend
