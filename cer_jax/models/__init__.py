"""Model registry: configs name a model, code looks it up here.

Every model is a Flax NNX module built by `create_model(name, num_classes=..., rngs=..., **kw)`
and called as `model(images, train=...)` on NHWC float images (already normalised by the input
pipeline), returning a `ModelOutput`. Model modules are imported only when a model is asked
for, so configs can name models without importing them; nothing here imports TensorFlow.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cer_jax.models import tracing

tracing.install()  # before any model is traced: see tracing.py


class ModelConfigError(ValueError):
    """A model setting, or an input size, that cannot work; the message names its config key.
    (This package imports only jax and flax: `cer_jax.train_state` makes it a one-line user
    error.)"""


class ModelOutput(NamedTuple):
    """What every model returns.

    logits: [N, K] the prediction logits (MA-Net: 0.6 * local + 0.4 * global).
    features: [N, D] pooled features before the head(s), for feature-level fusion.
    head_logits: the logits of each supervised head (ViT / ResNet: one; MA-Net: local, global).
    head_weights: the loss weight of each head; the training loss is sum_i w_i * CE(head_i).
    """

    logits: jax.Array
    features: jax.Array
    head_logits: tuple[jax.Array, ...]
    head_weights: tuple[float, ...]


# The classifier heads compute in float32 whatever model.dtype, as big_vision's: in bfloat16
# their logits were steps of 1/16 around 10, so that close classes tied (argmax took the lower
# index) and the probabilities that fusion averages were coarse. K outputs: no measurable cost.
HEAD_DTYPE = jnp.float32

# name -> "module:factory". Each factory has the signature
#   factory(*, num_classes: int, rngs: nnx.Rngs, **kwargs) -> nnx.Module
# and the module class defines HEAD_NAMES: the attribute names of its classification head(s),
# which weight import and fine-tuning re-initialise for a new label space.
_FACTORIES: dict[str, str] = {
    "vit": "cer_jax.models.vit:create",
    "resnet": "cer_jax.models.resnet:create",
    "manet": "cer_jax.models.manet:create",
}


def available_models() -> list[str]:
    return sorted(_FACTORIES)


def get_factory(name: str) -> Callable[..., nnx.Module]:
    if name not in _FACTORIES:
        raise ModelConfigError(
            f"Unknown model {name!r} (config key model.name). "
            f"Choose one of: {', '.join(available_models())}."
        )
    module_name, attr = _FACTORIES[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Builds model `name` with a `num_classes`-way head; kwargs are the model's own options."""
    return get_factory(name)(num_classes=num_classes, rngs=rngs, **kwargs)


def default_options(name: str) -> dict[str, Any]:
    """The default of every keyword option of model `name` (from its factory's signature)."""
    factory = get_factory(name)
    # A class's own __init__: NNX's metaclass hides the constructor's signature.
    signature = inspect.signature(factory.__init__ if inspect.isclass(factory) else factory)
    parameters = signature.parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty and p.name not in ("num_classes", "rngs")
    }
