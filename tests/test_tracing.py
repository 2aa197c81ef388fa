"""Tracing an NNX model does not walk the trace at each Variable assignment
(cer_jax.models.tracing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src import core
from jax._src.interpreters import partial_eval

import cer_jax.models  # noqa: F401  (installs the fix)
from cer_jax.models import tracing


@pytest.fixture
def trace_walks(monkeypatch) -> list[int]:
    """Counts the calls of the trace walk that JAX 0.10 runs for a tracer's attribute errors."""
    calls: list[int] = []
    real = partial_eval.DynamicJaxprTracer._origin_msg

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", counted)
    return calls


def test_rng_draws_and_batch_norm_updates_under_a_trace_walk_nothing(trace_walks):
    def build_and_train(x):
        model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
                               nnx.BatchNorm(4, rngs=nnx.Rngs(1)),
                               nnx.Dropout(0.5, rngs=nnx.Rngs(2)))
        return model(x)  # BatchNorm statistics and the dropout counter are updated

    jax.eval_shape(build_and_train, jnp.ones((2, 3)))
    assert trace_walks == []
    assert not tracing.needs_fix()


def test_attribute_probes_on_tracers_behave_as_before(trace_walks):
    seen = {}

    def probe(x):
        seen["sharding"] = getattr(x, "sharding", None)
        seen["has_device"] = hasattr(x, "device")
        with pytest.raises(AttributeError, match="use `jax.typeof"):
            x.sharding  # noqa: B018
        return x

    jax.jit(probe)(jnp.ones(2))
    assert seen == {"sharding": None, "has_device": False}
    assert trace_walks == []
    concrete = jnp.ones(2)  # concrete arrays keep their attributes
    assert concrete.sharding.device_set == {concrete.device}
    assert isinstance(core.Tracer.__dict__["sharding"], property)
