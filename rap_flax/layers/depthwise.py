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
* ``shifted_vjp``: ``shifted`` with a hand-written backward pass, tuned for XLA:CPU.
  Autodiff of ``shifted`` turns the kernel gradient into ``kh * kw`` separate full
  reductions, each after copying a slice of the input (XLA:CPU does not fuse slices
  into reductions), and the stride-2 input gradient into scatters through interior
  padding. Here each tap's kernel-gradient products are first summed over blocks of
  output rows inside one fused elementwise pass, so only small partial sums are
  reduced, and the input gradient is a stride-1 correlation of the output gradient per
  stride phase.
* ``auto``: the implementation measured fastest on the platform the model is built for
  (``rap_flax.create_model(..., platform=)``; the training program passes its mesh's, so a
  step compiled for a TPU from a CPU host gets ``grouped``), else on
  ``jax.default_backend()`` (see ``DEFAULT_IMPLEMENTATION``; ``benchmarks/depthwise_conv.py``
  produces the figures).

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
# forward + backward at the MobileNetV3-large / 224 depthwise shapes (batch 32) of
# benchmarks/depthwise_conv.py (figures in benchmarks/README.md). GPU and TPU have native
# depthwise kernels (cuDNN, the TPU compiler), so they get the plain grouped convolution.
DEFAULT_IMPLEMENTATION = {"cpu": "shifted_vjp", "gpu": "grouped", "tpu": "grouped"}
_FALLBACK_IMPLEMENTATION = "grouped"

# Output rows summed per block in the fused passes of the blocked kernel gradient.
# Measured per V3-large layer (batch 32): 8 rows compile in 0.4-0.9 s and run within
# 5-20% of the fastest block length, while 28-112 rows compile 2-4x slower (1.3-3.3 s).
_MAX_BLOCK_ROWS = 8


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
  return _JITTED[implementation](x, kernel, strides)


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
  """a[:, row::row_step][:, :rows], a[:, :, col::col_step][:, :, :cols] in one slice."""
  n, _, _, c = a.shape
  return lax.slice(
      a, (0, row, col, 0),
      (n, row + row_step * (rows - 1) + 1, col + col_step * (cols - 1) + 1, c),
      (1, row_step, col_step, 1))


def _padded(x, before, after):
  """x zero-padded by before[d] / after[d] rows and columns (negative: cropped)."""
  return lax.pad(x, jnp.zeros((), x.dtype),
                 ((0, 0, 0), (before[0], after[0], 0), (before[1], after[1], 0), (0, 0, 0)))


def _correlate(src, taps, out_shape, before, stride, acc_dtype):
  """out[o, p] = sum_ij src[s * o + i - before[0], s * p + j - before[1]] * taps[i, j].

  `src` is NHWC and read as zero outside its extent; taps is (kh, kw, C). All taps are
  summed in one fused elementwise pass over a padded copy of `src`.
  """
  kh, kw = taps.shape[:2]
  rows, cols = out_shape
  window = _padded(src, before, [stride * (out - 1) + k - size - b for out, k, size, b in
                                 zip(out_shape, (kh, kw), src.shape[1:3], before)])
  window = window.astype(acc_dtype)
  taps = taps.astype(acc_dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      term = _strided_window(window, i, j, rows, cols, stride, stride) * taps[i, j]
      out = term if out is None else out + term
  return out


def _shifted(x, kernel, strides):
  kh, kw = kernel.shape[:2]
  ph, pw = _padding(kernel.shape)
  out_shape = (_output_size(x.shape[1], kh, ph, strides),
               _output_size(x.shape[2], kw, pw, strides))
  y = _correlate(x, kernel[:, :, 0, :], out_shape, (ph, pw), strides,
                 _accumulation_dtype(x.dtype))
  return y.astype(x.dtype)


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


def _phase_taps(k, pad, stride, phase):
  """Taps of the transposed conv that reach input rows u = stride * a + phase.

  Padded row u + pad = stride * o + i, so i = rho + stride * m with
  rho = (phase + pad) % stride and o = a + (phase + pad) // stride - m. As a correlation
  over a (see _correlate) that is the taps i = rho, rho + stride, ... in reverse order,
  read with `before` = (their count - 1) - (phase + pad) // stride.
  Returns (rho, count, before).
  """
  rho = (phase + pad) % stride
  count = len(range(rho, k, stride))
  return rho, count, count - 1 - (phase + pad) // stride


def _input_grad(grad_out, kernel, x_shape, s):
  """Transposed depthwise conv, one stride phase of the input at a time.

  Input rows s * a + r only receive the taps i = (r + pad) mod s + s * m, so each phase is
  a stride-1 correlation of grad_out with a sub-kernel (all of it, flipped, at stride 1);
  the phases are then interleaved.
  """
  n, h, w, c = x_shape
  kh, kw = kernel.shape[:2]
  ph, pw = _padding(kernel.shape)
  acc_dtype = _accumulation_dtype(grad_out.dtype)
  phase_rows, phase_cols = -(-h // s), -(-w // s)
  phases = []
  for r in range(s):
    row_first, row_count, row_before = _phase_taps(kh, ph, s, r)
    row = []
    for q in range(s):
      col_first, col_count, col_before = _phase_taps(kw, pw, s, q)
      if row_count and col_count:
        taps = kernel[row_first::s, col_first::s, 0, :][::-1, ::-1]
        row.append(_correlate(grad_out, taps, (phase_rows, phase_cols),
                              (row_before, col_before), 1, acc_dtype))
      else:  # stride larger than the kernel: no tap reaches this phase
        row.append(jnp.zeros((n, phase_rows, phase_cols, c), acc_dtype))
    phases.append(jnp.stack(row, axis=3))
  # (n, phase_rows, s, phase_cols, s, c): row s * a + r of the input is phases[r][:, a].
  grad = jnp.stack(phases, axis=2).reshape(n, phase_rows * s, phase_cols * s, c)
  return grad[:, :h, :w, :]


def _kernel_grad(x, grad_out, kernel_shape, s):
  """sum over (n, o, p) of x[n, s*o + i - ph, s*p + j - pw] * grad_out[n, o, p] per tap."""
  kh, kw = kernel_shape[:2]
  ph, pw = _padding(kernel_shape)
  acc_dtype = _accumulation_dtype(grad_out.dtype)
  rows, cols = grad_out.shape[1:3]
  window = _padded(x, (ph, pw), [s * (out - 1) + k - size - pad for out, k, size, pad in
                                 zip((rows, cols), (kh, kw), x.shape[1:3], (ph, pw))])
  sums = _blocked_tap_sums(window.astype(acc_dtype), 0, grad_out.astype(acc_dtype), kh, kw, s)
  return sums.reshape(kh, kw, 1, x.shape[-1])


def _blocked_tap_sums(window, row0, grad, kh, kw, s):
  """(kh * kw, C): per tap, the sum of the shifted window times grad.

  Autodiff of the shifted forward reduces each tap's product separately, and XLA:CPU
  fuses slices into elementwise loops but not into reductions, so each of those kh * kw
  reductions first copies a slice: ~3 * kh * kw passes over the activations. Here each
  tap's products are summed over `block` output rows with explicit adds inside one fused
  elementwise pass, with the taps stacked next to the channels, and only these partial
  sums (kh * kw / block of the data) are reduced. Rows beyond a whole number of blocks
  form one more, shorter block.
  """
  height, width = grad.shape[1:3]
  block = _row_block(height)
  blocks = height // block
  partial_sums = []
  for i in range(kh):
    for j in range(kw):
      acc = None
      for r in range(block):
        term = (_strided_window(window, row0 + s * r + i, j, blocks, width, s * block, s) *
                _strided_window(grad, r, 0, blocks, width, block, 1))
        acc = term if acc is None else acc + term
      partial_sums.append(acc)
  stacked = jnp.stack(partial_sums, axis=3)  # (n, blocks, width, kh * kw, C)
  sums = jnp.sum(stacked, axis=(0, 1, 2))
  done = blocks * block
  if done < height:
    sums = sums + _blocked_tap_sums(window, row0 + s * done, grad[:, done:], kh, kw, s)
  return sums


def _row_block(height):
  """Rows per block: at most _MAX_BLOCK_ROWS, a divisor of `height` close below if any."""
  block = max(1, min(height, _MAX_BLOCK_ROWS))
  for candidate in range(block, (block + 1) // 2 - 1, -1):
    if height % candidate == 0:
      return candidate
  return block


# Jitted so that eager calls (model.init, un-jitted tests) compile the many slices of the
# shifted implementations once per shape instead of dispatching them one by one; inside
# an outer jit this is inlined.
_JITTED = {name: jax.jit(fn, static_argnums=2) for name, fn in
           (("grouped", _grouped), ("shifted", _shifted), ("shifted_vjp", _shifted_vjp))}


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
