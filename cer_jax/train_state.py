"""The model and train state as plain pytrees: sharded, donated, checkpointed and restored.

    model state = {"params": {...}, "rest": {...}}
    train state = {"step": int32 [], "params": {...}, "rest": {...}, "opt_state": optax state}

`params` are the model's `nnx.Param`s and `rest` everything else the model carries (BatchNorm
statistics, the dropout RNG key and counter), both as pure nested dicts of arrays from
`nnx.split`. The model's graph definition is static: it is rebuilt from the config, so a saved
config plus the model state restore a model, whatever optimizer trained it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from cer_jax import models
from cer_jax.errors import UserError

TrainState = dict[str, Any]
ModelState = dict[str, Any]
MODEL_STATE_KEYS = ("params", "rest")


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.model minus its name and its unset (None / "auto") keys, which take the model's
    defaults; `dtype` given as a string ("bfloat16") made a dtype. The trainer resolves "auto"
    keys first (cer_jax.warm_start), so a saved config always names what was built."""
    kwargs = {
        k: v for k, v in model_config.to_dict().items()
        if k != "name" and v is not None and v != "auto"
    }
    if "dtype" in kwargs:
        kwargs["dtype"] = compute_dtype(kwargs["dtype"])
    return kwargs


def compute_dtype(name: Any) -> jnp.dtype:
    """config.model.dtype as a dtype; anything but a floating type is a user error."""
    try:
        dtype = jnp.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise UserError(f"model.dtype={name!r} is not a floating-point type: use float32, or "
                        "bfloat16 for mixed precision on TPU / GPU.")
    if dtype not in (jnp.float32, jnp.bfloat16):
        # float16's gradients underflow without loss scaling, which the step does not do;
        # float64 is float32 unless x64 is on, and float8 types are no compute types here.
        raise UserError(f"model.dtype={name!r} is not supported (float16 would need loss "
                        "scaling): use float32, or bfloat16 for mixed precision on TPU / GPU.")
    return dtype


def create_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> nnx.Module:
    """A freshly initialised model as named by config.model (dropout stream seeded too)."""
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    try:
        return models.create_model(
            config.model.name, num_classes=num_classes, rngs=rngs, **model_kwargs(config.model)
        )
    except models.ModelConfigError as e:
        raise UserError(str(e)) from e


def check_model(config: ml_collections.ConfigDict, num_classes: int = 2) -> None:
    """Builds the model and runs its forward pass on one config.input.image_size image with
    abstract arrays (shapes only, nothing computed), so that a bad model setting, or an image size
    the model cannot take, is one line before any data is read or anything is compiled. No model
    setting is valid for one head width and not another, so a caller that has not read the data
    yet can leave num_classes at its default."""
    size = config.input.image_size

    def forward() -> jax.Array:
        model = models.create_model(config.model.name, num_classes=num_classes,
                                    rngs=nnx.Rngs(0), **model_kwargs(config.model))
        return model(jnp.zeros((1, size, size, 3), jnp.float32)).logits

    try:
        jax.eval_shape(forward)
    except models.ModelConfigError as e:  # outside the trace: no JAX traceback note on it
        raise UserError(str(e)) from e


def head_names(model: nnx.Module) -> tuple[str, ...]:
    return tuple(type(model).HEAD_NAMES)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """graphdef, params (pure dict), rest (pure dict: batch stats, RNG state)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def merge_model(graphdef: nnx.GraphDef, params: dict, rest: dict) -> nnx.Module:
    return nnx.merge(graphdef, params, rest)


def model_state(state: TrainState) -> ModelState:
    """The part of a train state that outlives training (no optimizer, no step)."""
    return {key: state[key] for key in MODEL_STATE_KEYS}


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, rest = split_model(model)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "rest": rest,
        "opt_state": tx.init(params),
    }
    return graphdef, state


def abstract_model_state(
    config: ml_collections.ConfigDict, num_classes: int
) -> tuple[nnx.GraphDef, ModelState]:
    """The model state's structure, shapes and dtypes without allocating it (a restore target)."""
    box: dict[str, nnx.GraphDef] = {}

    def build() -> ModelState:
        graphdef, params, rest = split_model(create_model(config, num_classes, seed=0))
        box["graphdef"] = graphdef
        return {"params": params, "rest": rest}

    abstract = jax.eval_shape(build)
    return box["graphdef"], abstract


def num_params(params: dict) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
