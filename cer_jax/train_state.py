"""The train state: one plain pytree that is sharded, donated, checkpointed and restored.

    state = {"step": int32 [], "params": {...}, "rest": {...}, "opt_state": optax state}

`params` are the model's `nnx.Param`s and `rest` everything else the model carries (BatchNorm
statistics, the dropout RNG key and counter), both as pure nested dicts of arrays from
`nnx.split`. The model's graph definition is static: it is rebuilt from the config, so a saved
config plus this pytree are enough to restore a model.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from cer_jax import models

TrainState = dict[str, Any]


def model_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.model minus its name, with `dtype` given as a string ("bfloat16") made a dtype."""
    kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
    if "dtype" in kwargs:
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return kwargs


def create_model(config: ml_collections.ConfigDict, num_classes: int, seed: int) -> nnx.Module:
    """A freshly initialised model as named by config.model (dropout stream seeded too)."""
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return models.create_model(
        config.model.name, num_classes=num_classes, rngs=rngs, **model_kwargs(config.model)
    )


def head_names(model: nnx.Module) -> tuple[str, ...]:
    return tuple(type(model).HEAD_NAMES)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """graphdef, params (pure dict), rest (pure dict: batch stats, RNG state)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params.to_pure_dict(), rest.to_pure_dict()


def merge_model(graphdef: nnx.GraphDef, params: dict, rest: dict) -> nnx.Module:
    return nnx.merge(graphdef, params, rest)


def initialise_weights(model: nnx.Module, config: ml_collections.ConfigDict) -> None:
    """Loads config.init.checkpoint (a pre-trained file) or config.init.workdir (a cer_jax run's
    best checkpoint), in place; the classification head(s) stay freshly initialised."""
    from cer_jax import pretrained  # weight readers are only needed when asked for

    init = config.init
    if init.get("checkpoint"):
        report = pretrained.load_pretrained(
            model, config.model.name, init.checkpoint, keep_head=bool(init.get("keep_head"))
        )
    elif init.get("workdir"):
        from cer_jax import checkpointing
        from cer_jax.pretrained import core

        source, _ = checkpointing.restore_best_model(init.workdir)
        arrays = {
            name: jax.device_get(var.get_value())
            for name, var in core.model_arrays(source).items()
        }
        report = core.assign(
            model,
            arrays,
            source=f"{init.workdir} (best checkpoint)",
            head_names=head_names(model),
            keep_head=bool(init.get("keep_head")),
        )
    else:
        return
    logging.info("%s", report.summary())


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


def abstract_train_state(
    config: ml_collections.ConfigDict, num_classes: int, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """The state's structure, shapes and dtypes without allocating it (a restore target)."""
    box: dict[str, nnx.GraphDef] = {}

    def build() -> TrainState:
        graphdef, state = create_train_state(create_model(config, num_classes, seed=0), tx)
        box["graphdef"] = graphdef
        return state

    abstract = jax.eval_shape(build)
    return box["graphdef"], abstract


def num_params(params: dict) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
