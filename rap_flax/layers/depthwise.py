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
  stride phase. On large inputs the forward pass and both gradients also avoid
  padding the activations as a whole (interior plus thin border strips).
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
# forward + backward at the MobileNetV3-large / 224 depthwise shapes (batch 32) of
# benchmarks/depthwise_conv.py on the 2-core x86 dev host: shifted_vjp beat grouped
# 5.9-17x, shifted 1.7-2.3x and torch 1.6-2.6x there (sum over the shapes: 1.2 s vs
# grouped 12.8 s, shifted 2.5 s). It compiles slower (1-10 s vs grouped 0.5-1 s per
# layer), which only pays off over many steps. GPU and TPU are unmeasured here (no
# accelerator was available); cuDNN and the TPU compiler have native depthwise kernels,
# so they get the plain grouped convolution.
DEFAULT_IMPLEMENTATION = {"cpu": "shifted_vjp", "gpu": "grouped", "tpu": "grouped"}
_FALLBACK_IMPLEMENTATION = "grouped"

# shifted_vjp switches to its run-time-optimised path (border/interior split, blocked
# kernel gradient) from this many input elements on; below, compile time dominates.
_LARGE_MIN_ELEMENTS = 1 << 21
# Bound on taps * rows summed in one fused pass of the blocked kernel gradient: 16 rows
# for 3x3 was fastest among 4/8/16 rows, and compile time grows with the product.
_MAX_BLOCK_TERMS = 144
# On small inputs, rows per block grow only until the stacked per-tap partial sums fit
# in this many elements (compile time grows with the rows).
_MAX_PARTIAL_SUM_ELEMENTS = 1 << 22


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


def _interior(size, window, before, stride, out):
  """Output positions [lo, hi) whose window lies inside [0, size) (no zero padding read)."""
  lo = min(max(0, -(-before // stride)), out)
  hi = max(min((size - window + before) // stride + 1, out), lo)
  return lo, hi


def _split(lo, hi, out):
  """[0, out) as the border before the interior, the interior and the border after."""
  return [(a, b) for a, b in ((0, lo), (lo, hi), (hi, out)) if b > a]


def _source_window(src, rows, cols, before, window, stride):
  """The part of zero-extended `src` read by outputs `rows` x `cols`, with its origin.

  Returns (array, row0, col0) such that zero-extended src[s * o + i - before] is
  array[row0 + s * (o - rows[0]) + i]. Inside `src` that is `src` itself (no copy); near
  the border it is a small zero-padded copy of the window.
  """
  extents = []
  for (o0, o1), b, k, size in zip((rows, cols), before, window, src.shape[1:3]):
    start = stride * o0 - b
    extents.append((start, stride * (o1 - 1) - b + k, size))
  if all(0 <= start and stop <= size for start, stop, size in extents):
    return src, extents[0][0], extents[1][0]
  (r0, r1, h), (c0, c1, w) = extents
  inside = src[:, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w), :]
  padded = jnp.pad(inside, ((0, 0), (max(0, -r0), max(0, r1 - h)), (max(0, -c0), max(0, c1 - w)),
                            (0, 0)))
  return padded, 0, 0


def _strided_window(a, row, col, rows, cols, row_step, col_step):
  """a[:, row::row_step][:, :rows], a[:, :, col::col_step][:, :, :cols] in one slice."""
  n, _, _, c = a.shape
  return lax.slice(
      a, (0, row, col, 0),
      (n, row + row_step * (rows - 1) + 1, col + col_step * (cols - 1) + 1, c),
      (1, row_step, col_step, 1))


def _regions(src_shape, window, before, stride, out_shape, split_border):
  """Row ranges and column ranges of the output: the whole of it, or border | interior."""
  if not split_border:
    return [(0, out_shape[0])], [(0, out_shape[1])]
  return tuple(_split(*_interior(src_shape[d + 1], window[d], before[d], stride, out_shape[d]),
                      out_shape[d]) for d in (0, 1))


def _correlate(src, taps, out_shape, before, stride, acc_dtype, split_border):
  """out[o, p] = sum_ij src[s * o + i - before[0], s * p + j - before[1]] * taps[i, j].

  `src` is NHWC and read as zero outside its extent; taps is (kh, kw, C). With
  `split_border` the zero padding is never materialised for the whole tensor: the output
  is assembled from the interior, which reads `src` directly, and thin border strips,
  which read small padded copies. Padding a large activation costs a full extra pass
  (measured on CPU: 5-10x slower stride-2 forward at 32x112x112x64); on small
  ones the single padded region compiles much faster.
  """
  kh, kw = taps.shape[:2]
  taps = taps.astype(acc_dtype)
  row_parts, col_parts = _regions(src.shape, (kh, kw), before, stride, out_shape, split_border)

  def region(rows, cols):
    window, row0, col0 = _source_window(src, rows, cols, before, (kh, kw), stride)
    window = window.astype(acc_dtype)
    out = None
    for i in range(kh):
      for j in range(kw):
        term = _strided_window(window, row0 + i, col0 + j, rows[1] - rows[0],
                               cols[1] - cols[0], stride, stride) * taps[i, j]
        out = term if out is None else out + term
    return out

  def concat(parts, axis):
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)

  return concat([concat([region(rows, cols) for cols in col_parts], axis=2)
                 for rows in row_parts], axis=1)


def _is_large(x_shape, kernel_shape):
  """Whether shifted_vjp takes its run-time-optimised (slower to compile) path."""
  n, h, w, c = x_shape
  kh, kw = kernel_shape[:2]
  return n * h * w * c >= _LARGE_MIN_ELEMENTS and h >= 4 * kh and w >= 4 * kw


def _shifted_sum(x, kernel, strides, split_border):
  kh, kw = kernel.shape[:2]
  ph, pw = _padding(kernel.shape)
  out_shape = (_output_size(x.shape[1], kh, ph, strides),
               _output_size(x.shape[2], kw, pw, strides))
  y = _correlate(x, kernel[:, :, 0, :], out_shape, (ph, pw), strides,
                 _accumulation_dtype(x.dtype), split_border)
  return y.astype(x.dtype)


def _shifted(x, kernel, strides):
  return _shifted_sum(x, kernel, strides, split_border=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shifted_vjp(x, kernel, strides):
  return _shifted_sum(x, kernel, strides, _is_large(x.shape, kernel.shape))


def _shifted_vjp_forward(x, kernel, strides):
  return _shifted_sum(x, kernel, strides, _is_large(x.shape, kernel.shape)), (x, kernel)


def _shifted_vjp_backward(strides, residuals, grad_out):
  x, kernel = residuals
  split_border = _is_large(x.shape, kernel.shape)
  return (_input_grad(grad_out, kernel, x.shape, strides, split_border).astype(x.dtype),
          _kernel_grad(x, grad_out, kernel.shape, strides, split_border).astype(kernel.dtype))


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


def _input_grad(grad_out, kernel, x_shape, s, split_border):
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
                              (row_before, col_before), 1, acc_dtype, split_border))
      else:  # stride larger than the kernel: no tap reaches this phase
        row.append(jnp.zeros((n, phase_rows, phase_cols, c), acc_dtype))
    phases.append(jnp.stack(row, axis=3))
  # (n, phase_rows, s, phase_cols, s, c): row s * a + r of the input is phases[r][:, a].
  grad = jnp.stack(phases, axis=2).reshape(n, phase_rows * s, phase_cols * s, c)
  return grad[:, :h, :w, :]


def _kernel_grad(x, grad_out, kernel_shape, s, split_border):
  """sum over (n, o, p) of x[n, s*o + i - ph, s*p + j - pw] * grad_out[n, o, p] per tap.

  Without `split_border` (small inputs): one region over a padded copy of x, in row
  blocks only as long as a memory budget requires. With it (x is never padded as a
  whole, see _correlate): the interior in the longest row blocks, which run fastest,
  and the four thin border strips (top and bottom full width, left and right beside the
  interior) one row per block, which keeps their share of the compile time small.
  """
  kh, kw = kernel_shape[:2]
  ph, pw = _padding(kernel_shape)
  ho, wo = grad_out.shape[1:3]
  acc_dtype = _accumulation_dtype(grad_out.dtype)
  if split_border:
    (r0, r1), (c0, c1) = (_interior(x.shape[d + 1], kernel_shape[d], (ph, pw)[d], s,
                                    grad_out.shape[d + 1]) for d in (0, 1))
    regions = [((r0, r1), (c0, c1), _MAX_BLOCK_TERMS, None)] + [
        (rows, cols, kh * kw, None)
        for rows, cols in (((0, r0), (0, wo)), ((r1, ho), (0, wo)), ((r0, r1), (0, c0)),
                           ((r0, r1), (c1, wo)))
        if rows[1] > rows[0] and cols[1] > cols[0]]
  else:
    regions = [((0, ho), (0, wo), _MAX_BLOCK_TERMS, _MAX_PARTIAL_SUM_ELEMENTS)]
  total = 0.0
  for rows, cols, max_terms, budget in regions:
    window, row0, col0 = _source_window(x, rows, cols, (ph, pw), (kh, kw), s)
    grad = grad_out[:, rows[0]:rows[1], cols[0]:cols[1], :]
    total = total + _blocked_tap_sums(window.astype(acc_dtype), row0, col0,
                                      grad.astype(acc_dtype), kh, kw, s, max_terms, budget)
  return total.reshape(kh, kw, 1, x.shape[-1])


def _blocked_tap_sums(window, row0, col0, grad, kh, kw, s, max_terms, budget):
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
  block = _row_block(height, kh * kw, max_terms, kh * kw * grad.size, budget)
  blocks = height // block
  partial_sums = []
  for i in range(kh):
    for j in range(kw):
      acc = None
      for r in range(block):
        term = (_strided_window(window, row0 + s * r + i, col0 + j, blocks, width, s * block, s) *
                _strided_window(grad, r, 0, blocks, width, block, 1))
        acc = term if acc is None else acc + term
      partial_sums.append(acc)
  stacked = jnp.stack(partial_sums, axis=3)  # (n, blocks, width, kh * kw, C)
  sums = jnp.sum(stacked, axis=(0, 1, 2))
  done = blocks * block
  if done < height:
    sums = sums + _blocked_tap_sums(window, row0 + s * done, col0, grad[:, done:], kh, kw, s,
                                    max_terms, budget)
  return sums


def _row_block(height, taps, max_terms, partial_sum_elements, budget):
  """Rows summed per block in _blocked_tap_sums: at most max_terms / taps.

  With a `budget`, only as many as keep the stacked partial sums (taps / block of the
  region per tap) under `budget` elements: every extra row adds taps slices to compile,
  which dominates on small inputs. A divisor of `height` close below is preferred.
  """
  block = max(1, min(height, max_terms // taps))
  if budget is not None:
    block = min(block, -(-partial_sum_elements // budget))
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
