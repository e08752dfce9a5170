"""Depthwise convolution with interchangeable implementations.

Every implementation computes the same function: a per-channel (groups == channels)
cross-correlation with symmetric padding ``k // 2`` on every side, which equals
``torch.nn.Conv2d(C, C, k, stride, padding=k // 2, groups=C, bias=False)``. At stride 2
this differs from Flax's ``'SAME'`` padding, which pads asymmetrically.

Implementations:

* ``grouped``: ``lax.conv_general_dilated`` with ``feature_group_count=C``. Backends
  with a native depthwise kernel (cuDNN, TPU) run this best; XLA:CPU lowers it to a slow
  generic loop, and its gradients are slower still.
* ``shifted``: the sum over the ``kh * kw`` taps of a strided slice of the padded input
  times that tap's per-channel weights. XLA fuses the whole sum into one elementwise
  pass; gradients come from autodiff.
* ``shifted_vjp``: the ``shifted`` forward with a hand-written backward pass. Autodiff of
  ``shifted`` turns the kernel gradient into ``kh * kw`` separate full reductions, each
  after copying a slice of the input, so the backward pass reads the activations about
  ``3 * kh * kw`` times. Here each tap's products are first summed over a block of
  output rows inside one fused elementwise pass and only the much smaller partial sums
  are reduced; the input gradient is computed per stride phase (a stride-1 correlation
  of the output gradient per phase) instead of by scattering through interior padding.
* ``auto``: the implementation measured fastest on ``jax.default_backend()`` (see
  ``DEFAULT_IMPLEMENTATION``; ``benchmarks/depthwise_conv.py`` produces the figures).

Whatever implementation runs, the parameter is ``kernel`` of shape ``(kh, kw, 1, C)`` in
float32, so checkpoints are interchangeable between implementations.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("grouped", "shifted", "shifted_vjp")

# Training needs the forward and the backward pass, so the CPU entry is the fastest for
# value_and_grad at the MobileNetV3-large / 224 depthwise shapes in
# benchmarks/depthwise_conv.py (2-core x86 host): shifted_vjp beats grouped by 4-30x
# and shifted by 1.5-5x there. GPU and TPU are unmeasured here (no accelerator was
# available); cuDNN and the TPU compiler have native depthwise kernels, so they get the
# plain grouped convolution.
DEFAULT_IMPLEMENTATION = {"cpu": "shifted_vjp", "gpu": "grouped", "tpu": "grouped"}
_FALLBACK_IMPLEMENTATION = "grouped"

# Output rows whose kernel-gradient products are summed inside the fused elementwise pass
# of shifted_vjp before the remaining reduction; 16 was fastest among 4/8/16 on CPU.
_WEIGHT_GRAD_ROW_BLOCK = 16


def resolve_implementation(implementation: str, backend: str | None = None) -> str:
  """Returns the concrete implementation name for `implementation` on `backend`."""
  if implementation == "auto":
    backend = backend or jax.default_backend()
    return DEFAULT_IMPLEMENTATION.get(backend, _FALLBACK_IMPLEMENTATION)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"Unknown depthwise implementation {implementation!r}; choose one of "
        f"{('auto',) + IMPLEMENTATIONS}.")
  return implementation


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: int = 1,
                   implementation: str = "auto") -> jax.Array:
  """Depthwise conv of NHWC `x` with `kernel` (kh, kw, 1, C), symmetric padding k // 2.

  Computes in the dtype of `x` and `kernel` (they must match); low-precision inputs are
  accumulated in float32 by the shifted implementations and the result cast back.
  """
  implementation = resolve_implementation(implementation)
  _check_operands(x, kernel, strides)
  if implementation == "grouped":
    return _grouped(x, kernel, strides)
  if implementation == "shifted":
    return _shifted(x, kernel, strides)
  return _shifted_vjp(x, kernel, strides)


def _check_operands(x, kernel, strides):
  if x.ndim != 4:
    raise ValueError(f"depthwise_conv expects NHWC input (4 dims), got shape {x.shape}.")
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3]:
    raise ValueError(
        f"depthwise kernel must have shape (kh, kw, 1, C={x.shape[3]}), got {kernel.shape}.")
  if x.dtype != kernel.dtype:
    raise ValueError(
        f"input dtype {x.dtype} and kernel dtype {kernel.dtype} differ; cast both to the "
        "compute dtype first.")
  if not isinstance(strides, int) or strides < 1:
    raise ValueError(f"strides must be a positive int, got {strides!r}.")


def _padding(kernel_shape):
  return kernel_shape[0] // 2, kernel_shape[1] // 2


def _output_size(size, k, pad, stride):
  return (size + 2 * pad - k) // stride + 1


def _accumulation_dtype(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _grouped(x, kernel, strides):
  ph, pw = _padding(kernel.shape)
  return lax.conv_general_dilated(
      x, kernel, window_strides=(strides, strides), padding=((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def _strided_window(a, row, col, rows, cols, row_step, col_step):
  """a[:, row::row_step][:rows], a[:, :, col::col_step][:, :, :cols] in one slice."""
  n, _, _, c = a.shape
  return lax.slice(
      a, (0, row, col, 0),
      (n, row + row_step * (rows - 1) + 1, col + col_step * (cols - 1) + 1, c),
      (1, row_step, col_step, 1))


def _shifted(x, kernel, strides):
  kh, kw = kernel.shape[:2]
  ph, pw = _padding(kernel.shape)
  ho = _output_size(x.shape[1], kh, ph, strides)
  wo = _output_size(x.shape[2], kw, pw, strides)
  acc_dtype = _accumulation_dtype(x.dtype)
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))).astype(acc_dtype)
  taps = kernel[:, :, 0, :].astype(acc_dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      term = _strided_window(xp, i, j, ho, wo, strides, strides) * taps[i, j]
      out = term if out is None else out + term
  return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_vjp(x, kernel, strides):
  return _shifted(x, kernel, strides)


def _shifted_vjp_forward(x, kernel, strides):
  return _shifted(x, kernel, strides), (x, kernel)


def _shifted_vjp_backward(strides, residuals, grad_out):
  x, kernel = residuals
  return (_input_grad(grad_out, kernel, x.shape, strides).astype(x.dtype),
          _kernel_grad(x, grad_out, kernel.shape, strides).astype(kernel.dtype))


_shifted_vjp.defvjp(_shifted_vjp_forward, _shifted_vjp_backward)


def _input_grad(grad_out, kernel, x_shape, s):
  """Transposed depthwise conv, one stride phase at a time.

  Padded-input position u = s * a + r only receives taps i = r + s * m, from output
  a - m, so each phase (r, q) is a stride-1 correlation of grad_out with the taps
  kernel[r::s, q::s]. The phases are interleaved and the padding cropped.
  """
  n, h, w, c = x_shape
  kh, kw = kernel.shape[:2]
  ph, pw = _padding(kernel.shape)
  ho, wo = grad_out.shape[1:3]
  acc_dtype = _accumulation_dtype(grad_out.dtype)
  taps = kernel[:, :, 0, :].astype(acc_dtype)
  # Phase grids cover the padded input: rows s * a + r for a < rows_a.
  rows_a = -(-(h + 2 * ph) // s)
  cols_b = -(-(w + 2 * pw) // s)
  # Taps per phase are at most ceil(k / s): pad grad_out so that a - m stays in range.
  mh, mw = -(-kh // s), -(-kw // s)
  gp = jnp.pad(grad_out.astype(acc_dtype),
               ((0, 0), (mh - 1, max(0, rows_a - ho)), (mw - 1, max(0, cols_b - wo)), (0, 0)))
  phases = []
  for r in range(s):
    row = []
    for q in range(s):
      acc = jnp.zeros((n, rows_a, cols_b, c), acc_dtype)
      for m in range(len(range(r, kh, s))):
        for l in range(len(range(q, kw, s))):
          window = _strided_window(gp, mh - 1 - m, mw - 1 - l, rows_a, cols_b, 1, 1)
          acc = acc + window * taps[r + s * m, q + s * l]
      row.append(acc)
    phases.append(jnp.stack(row, axis=3))
  # (n, rows_a, s, cols_b, s, c) -> interleaved rows/cols of the padded input.
  padded = jnp.stack(phases, axis=2).reshape(n, rows_a * s, cols_b * s, c)
  return padded[:, ph:ph + h, pw:pw + w, :]


def _kernel_grad(x, grad_out, kernel_shape, s):
  """sum over (n, oh, ow) of x_pad[n, s*oh + i, s*ow + j] * grad_out[n, oh, ow] per tap."""
  n, h, w, c = x.shape
  kh, kw = kernel_shape[:2]
  ph, pw = _padding(kernel_shape)
  ho, wo = grad_out.shape[1:3]
  acc_dtype = _accumulation_dtype(grad_out.dtype)
  block = min(_WEIGHT_GRAD_ROW_BLOCK, ho)
  blocks = -(-ho // block)
  gp = jnp.pad(grad_out.astype(acc_dtype), ((0, 0), (0, blocks * block - ho), (0, 0), (0, 0)))
  rows_needed = s * (blocks * block - 1) + kh
  cols_needed = s * (wo - 1) + kw
  xp = jnp.pad(x.astype(acc_dtype),
               ((0, 0), (ph, max(0, rows_needed - h - ph)), (pw, max(0, cols_needed - w - pw)),
                (0, 0)))
  partial_sums = []
  for i in range(kh):
    for j in range(kw):
      acc = None
      for r in range(block):
        term = (_strided_window(xp, i + s * r, j, blocks, wo, s * block, s) *
                _strided_window(gp, r, 0, blocks, wo, block, 1))
        acc = term if acc is None else acc + term
      partial_sums.append(acc)
  # Taps next to channels keep one output position's taps in the same cache lines.
  stacked = jnp.stack(partial_sums, axis=3)  # (n, blocks, wo, kh * kw, c)
  return jnp.sum(stacked, axis=(0, 1, 2)).reshape(kh, kw, 1, c)


class DepthwiseConv(nn.Module):
  """Depthwise conv, no bias, symmetric padding kernel_size // 2 (torch groups=C).

  Attributes:
    kernel_size: square window size.
    strides: stride in both spatial dims.
    dtype: compute dtype; input and kernel are cast to it (the parameter stays float32).
    implementation: "auto" or one of IMPLEMENTATIONS.
  """
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    implementation = resolve_implementation(self.implementation)
    if not isinstance(self.kernel_size, int) or self.kernel_size < 1:
      raise ValueError(f"kernel_size must be a positive int, got {self.kernel_size!r}.")
    if x.ndim != 4:
      raise ValueError(f"DepthwiseConv expects NHWC input (4 dims), got shape {x.shape}.")
    kernel = self.param(
        "kernel", nn.initializers.variance_scaling(2.0, "fan_in", "uniform"),
        (self.kernel_size, self.kernel_size, 1, x.shape[-1]), jnp.float32)
    return depthwise_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides,
                          implementation)
