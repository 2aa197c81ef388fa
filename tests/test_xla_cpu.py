"""The CPU program shapes of cer_jax.models.xla_cpu compute what the plain forms compute."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cer_jax.models import xla_cpu

POOLS = [  # (input shape, window, strides, padding)
    ((2, 112, 112, 8), (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet / MA-Net stem pool
    ((2, 9, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # odd sizes
    ((2, 10, 10, 3), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 11, 8, 2), (3, 2), (1, 2), ((1, 0), (0, 1))),  # overlapping, asymmetric
]


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), POOLS)
def test_cpu_max_pool_equals_flax_max_pool_ties_included(shape, window, strides, padding):
    """Values equal; each gradient goes to the first maximum of its window, as flax's
    select-and-scatter sends it (post-ReLU inputs rounded to halves: many ties)."""
    x = jnp.round(2 * jax.nn.relu(jax.random.normal(jax.random.key(0), shape))) / 2

    def ours(x):
        return xla_cpu.max_pool(x, window, strides, padding)

    def flax(x):
        return nnx.max_pool(x, window, strides=strides, padding=padding)

    got, ours_vjp = jax.vjp(ours, x)
    want, flax_vjp = jax.vjp(flax, x)
    np.testing.assert_array_equal(got, want)
    cotangent = jax.random.normal(jax.random.key(1), want.shape)
    got_grad, want_grad = ours_vjp(cotangent)[0], flax_vjp(cotangent)[0]
    np.testing.assert_array_equal(got_grad != 0, want_grad != 0)  # the same positions
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)  # sums reordered


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), POOLS[1:])
def test_cpu_max_pool_forward_mode_equals_flax(shape, window, strides, padding):
    """jvp (and with it jacfwd and Hessian-vector products) works on CPU too and equals flax's:
    each output's tangent is that of its window's first maximum."""
    x = jnp.round(2 * jax.nn.relu(jax.random.normal(jax.random.key(0), shape))) / 2
    tangent = jax.random.normal(jax.random.key(1), shape)
    got = jax.jvp(lambda x: xla_cpu.max_pool(x, window, strides, padding), (x,), (tangent,))
    want = jax.jvp(lambda x: nnx.max_pool(x, window, strides=strides, padding=padding), (x,),
                   (tangent,))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_cpu_max_pool_program_has_no_select_and_scatter():
    """The CPU gradient program is the sliced form; flax's form would contain
    select-and-scatter (the slow expansion this module avoids)."""
    x = jnp.ones((2, 16, 16, 4))

    def grad_text(pool):
        return jax.jit(jax.grad(lambda x: jnp.sum(pool(x) ** 2))).lower(x).as_text()

    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))
    assert "select_and_scatter" not in grad_text(lambda x: xla_cpu.max_pool(x, *args))
    assert "select_and_scatter" in grad_text(
        lambda x: nnx.max_pool(x, args[0], strides=args[1], padding=args[2]))


@pytest.mark.parametrize("anchor", [1.5, np.nan, -np.inf], ids=["finite", "nan", "inf"])
def test_materialize_is_the_identity_through_either_branch(anchor):
    """Bit for bit, NaN, infinities and the sign of zero included, whichever branch the
    anchor picks; the gradient is the identity's."""
    x = jnp.array([[1.5, -0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, -3.25e-39]])
    anchor = jnp.full((2, 2), anchor)
    got = jax.jit(xla_cpu.materialize)(x, anchor)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(x).view(np.uint32))
    y = jax.random.normal(jax.random.key(2), (3, 5))
    grad = jax.grad(lambda y: jnp.sum(jnp.sin(xla_cpu.materialize(y, anchor))))(y)
    np.testing.assert_allclose(grad, jnp.cos(y), rtol=1e-6)


def test_materialize_survives_xla_cpu_to_the_compiled_program():
    """What makes it a fusion barrier: the conditional is still in the optimised CPU program
    (a conditional with two identical branches, by contrast, is simplified away)."""
    x, anchor = jnp.ones((4, 8)), jnp.ones((3,))

    def compiled(f):
        return jax.jit(lambda x, a: f(x * 2.0, a) + 1.0).lower(x, anchor).compile().as_text()

    assert " conditional(" in compiled(xla_cpu.materialize)
    assert " conditional(" not in compiled(
        lambda x, a: jax.lax.cond(jnp.isfinite(a[0]), lambda v: v, lambda v: v, x))
