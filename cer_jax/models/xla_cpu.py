"""Program shapes that XLA:CPU runs faster; GPU and TPU programs keep the plain form.

Each function here is exact (the same values and gradients as the plain form, up to the order
of floating-point sums) and chooses its CPU form with `lax.platform_dependent`, so a program
compiled for an accelerator contains none of it.

- `max_pool`: XLA:CPU expands the gradient of a max pool (select-and-scatter) into a variadic
  reduce-window over four int32 index arrays of the padded input's size and a scatter (the
  ResNet-50 / MA-Net stem pool, 3x3 stride 2 on 8x112x112x64, forward and backward: 123 ms).
  On CPU it is the maximum over the window's strided slices, and its gradient routes each
  output's cotangent to the first maximum of its window in row-major order, as select-and-scatter
  does, ties included (21 ms). Whole steps at 224 px, batch 8: ResNet-50 training 5 % faster,
  MA-Net training 6 % faster, evaluation unchanged within noise. The gradient rule is a custom
  JVP (reverse mode is its transpose), so forward-mode autodiff (`jax.jvp`, `jacfwd`,
  Hessian-vector products) works on CPU as on the other backends; a custom VJP refused it. (The
  pool's forward and backward under the JVP rule took 0.75x the custom VJP's time.)
- `materialize`: XLA:CPU fuses a chain of cheap elementwise ops into every consumer of its
  result, duplicating it. A residual stream (relu(bn(conv(x)) + shortcut), block after block)
  is then recomputed from the raw convolution outputs, back to the start of the stage, inside
  each consumer: the next block's convolutions and, worst, the transposing copies that XLA:CPU
  makes for convolution weight gradients. `materialize` writes a block's output to a buffer of
  its own (a conditional whose two branches are exact identities; fusion does not cross it),
  so its consumers read it. ResNet-50 at 224 px, batch 8: training step 13 %, evaluation 16 %
  faster. MA-Net does not use it: its training step was 5 % slower with it (its blocks'
  outputs are small, a conditional and a copy each cost more than the recomputation saved).

Figures: old and new programs alternating in one process, median of 9 per-pair ratios, on a
2-core AVX-512 AMD EPYC; the whole-step ratios against PyTorch before and after are in
BENCHMARKS.md ("CPU").
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Padding = Sequence[tuple[int, int]]


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Padding) -> jax.Array:
    """`nnx.max_pool(x, window, strides, padding)` of NHWC `x` with explicit padding."""
    window, strides = tuple(window), tuple(strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)

    def flax_path(x):
        return nnx.max_pool(x, window, strides=strides, padding=padding)

    return jax.lax.platform_dependent(
        x, cpu=functools.partial(_sliced_max_pool, window=window, strides=strides,
                                 padding=padding),
        default=flax_path)


def materialize(x: jax.Array, anchor: jax.Array) -> jax.Array:
    """`x`, computed once into its own buffer on CPU (see the module docstring); the identity
    elsewhere.

    anchor: any array that is the same on every device (a kernel of the block, say). The
    conditional's predicate is read from its first entry: a predicate read from the
    batch-sharded `x` would cost a collective per call on a multi-device mesh.
    """
    def buffered(x, anchor):
        def copysign_identity(v):  # the same values as `v`, NaN signs included
            return jnp.copysign(v, v)

        # Two different exact identities: identical branches would be merged away.
        return jax.lax.cond(jnp.isfinite(anchor.reshape(-1)[0]), lambda v: v,
                            copysign_identity, x)

    return jax.lax.platform_dependent(x, jax.lax.stop_gradient(anchor), cpu=buffered,
                                      default=lambda x, anchor: x)


def _window_slices(padded: jax.Array, window, strides, out_shape) -> list[jax.Array]:
    """The strided slice of `padded` at each window offset, offsets in row-major order."""
    (wh, ww), (sh, sw), (oh, ow) = window, strides, out_shape
    return [padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            for i, j in itertools.product(range(wh), range(ww))]


def _pad(x: jax.Array, padding) -> jax.Array:
    return jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)


def _out_shape(x: jax.Array, window, strides, padding) -> tuple[int, int]:
    return tuple((x.shape[1 + d] + sum(padding[d]) - window[d]) // strides[d] + 1
                 for d in range(2))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _sliced_max_pool(x, window, strides, padding):
    out_shape = _out_shape(x, window, strides, padding)
    return functools.reduce(jnp.maximum,
                            _window_slices(_pad(x, padding), window, strides, out_shape))


@_sliced_max_pool.defjvp
def _sliced_max_pool_jvp(window, strides, padding, primals, tangents):
    """Each output's tangent is its window's tangent at the first maximum (row-major), as
    select-and-scatter routes gradients, ties included. A JVP rather than a VJP so that
    forward-mode autodiff (jvp, jacfwd, Hessian-vector products) works on CPU as on the other
    backends; reverse mode transposes it (strided slices -> interior padding)."""
    (x,), (t,) = primals, tangents
    out_shape = _out_shape(x, window, strides, padding)
    pieces = _window_slices(_pad(x, padding), window, strides, out_shape)
    y = functools.reduce(jnp.maximum, pieces)
    tangent_pieces = _window_slices(jnp.pad(t, ((0, 0), *padding, (0, 0))), window, strides,
                                    out_shape)
    taken = jnp.zeros(y.shape, bool)
    out = jnp.zeros(y.shape, t.dtype)
    for piece, tangent_piece in zip(pieces, tangent_pieces, strict=True):
        first = (piece == y) & ~taken
        taken = taken | first
        out = out + jnp.where(first, tangent_piece, jnp.zeros((), t.dtype))
    return y, out
