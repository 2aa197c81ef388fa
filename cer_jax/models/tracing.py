"""Linear-time tracing of NNX models on JAX 0.10.

A tracer's `.sharding` / `.device` raise AttributeError (so `hasattr` and `getattr(x, name,
None)` work), but JAX 0.10 builds that error's message with `_origin_msg()`, which walks every
equation traced so far. Flax NNX probes `value.sharding` on every `Variable[...] = value`: each
RNG draw while a model is built under `eval_shape` / `jit`, each BatchNorm statistics update in
a train step. Tracing is then quadratic in the model's size: under cProfile, building MA-Net
abstractly took 12.6 s instead of 2.8 s, and a ResNet-50 train step trace spent 6 s in these
messages.
The fix upstream (jax-ml/jax#40041) drops that part of the message; `install()` does the same on
a JAX that still has it: the properties raise a bare AttributeError, and the tracer's own
`__getattr__` then raises JAX's usual message (for `sharding`, one that points to `jax.typeof`).
"""

from __future__ import annotations

from jax._src import core

_ATTRIBUTES = ("sharding", "device")


def _unavailable(name: str) -> property:
    def get(tracer: core.Tracer):
        raise AttributeError(name)

    get.__name__ = name
    return property(get)


def needs_fix() -> bool:
    """Whether this JAX's tracers still compute the trace walk for these attribute errors
    (False on a JAX whose Tracer no longer has these properties: nothing to change)."""
    for name in _ATTRIBUTES:
        attribute = vars(core.Tracer).get(name)
        getter = attribute.fget if isinstance(attribute, property) else None
        if getter is not None and "_origin_msg" in getter.__code__.co_names:
            return True
    return False


def install() -> None:
    """Makes the attribute probes cheap on every tracer; a no-op once JAX has the fix."""
    if needs_fix():
        for name in _ATTRIBUTES:
            setattr(core.Tracer, name, _unavailable(name))
