"""Pure train and eval steps over the train-state pytree, jitted over the data mesh.

`train_step(state, batch) -> (state, metrics)` merges the model from the static graphdef and the
state, computes the loss (sum over heads of head_weight * cross-entropy, optional label
smoothing and class weights), applies the optimizer and returns a new state. Metrics are sums
kept on device; the loop adds them up and fetches them only when it logs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cer_jax import sharding
from cer_jax.models import ModelOutput
from cer_jax.train_state import TrainState, merge_model

Metrics = dict[str, jax.Array]


def per_example_loss(
    output: ModelOutput, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """sum_i head_weight_i * CE(head_logits_i, labels), per example, in float32."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return sum(
        weight * optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
        for logits, weight in zip(output.head_logits, output.head_weights, strict=True)
    )


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    num_classes: int,
    label_smoothing: float,
    class_weights: np.ndarray | None,
) -> tuple[TrainState, Metrics]:
    labels = batch["label"]
    example_weights = (
        jnp.asarray(class_weights, jnp.float32)[labels]
        if class_weights is not None
        else jnp.ones(labels.shape, jnp.float32)
    )

    def loss_fn(params: dict) -> tuple[jax.Array, tuple[jax.Array, dict]]:
        model = merge_model(graphdef, params, state["rest"])
        output = model(batch["image"], train=True)
        losses = per_example_loss(output, labels, num_classes, label_smoothing)
        rest = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
        return weighted_mean(losses, example_weights), (output.logits, rest)

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.tree.norm(grads)
    count = jnp.asarray(labels.shape[0], jnp.float32)
    metrics = {
        "loss_sum": loss * count,
        "correct": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        "count": count,
        "grad_norm_sum": grad_norm,
        "steps": jnp.ones((), jnp.float32),
        # Checked on the host at log / checkpoint time only: no sync inside the loop.
        "nonfinite": jnp.logical_not(jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(
            jnp.float32
        ),
    }
    new_state = {"step": state["step"] + 1, "params": params, "rest": rest, "opt_state": opt_state}
    return new_state, metrics


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef, num_classes: int
) -> dict[str, jax.Array]:
    """Logits, features and per-example loss (no smoothing, no class weights) of one batch;
    the batch's "index" comes back with them, in the mesh's row order, which `run_eval` sorts
    by (a host's rows need not be contiguous in the global batch)."""
    model = merge_model(graphdef, state["params"], state["rest"])
    output = model(batch["image"], train=False)
    outputs = {
        "logits": output.logits.astype(jnp.float32),
        "features": output.features.astype(jnp.float32),
        "loss": per_example_loss(output, batch["label"], num_classes),
        "label": batch["label"],
        "mask": batch["mask"],
    }
    if "index" in batch:
        outputs["index"] = batch["index"]
    return outputs


def run_eval(
    eval_fn: Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]],
    state: TrainState,
    batches: Iterable[dict[str, np.ndarray]],
    mesh: Mesh,
) -> dict[str, np.ndarray]:
    """Every real example of a split exactly once (padding dropped by its mask), rows in the
    split's stored order whatever the number of hosts: {"logits", "features", "loss",
    "label", "file_name"} as numpy arrays.

    `eval_fn` returns the batch's "index" with its outputs, so they share the mesh's row
    order; the file names, which cannot enter the mesh, are gathered per host and matched to
    the rows by that index."""
    parts: dict[str, list[np.ndarray]] = {}
    local: dict[str, list[np.ndarray]] = {"file_name": [], "index": [], "mask": []}

    def collect(outputs: dict[str, jax.Array]) -> None:
        # Replicated outputs (the gather is inside the eval program): this host's copy is the
        # whole batch, read without dispatching another program, from the copy started below
        # (value.addressable_data(0) is another array object, which copied again, blocking).
        host = {key: np.asarray(value) for key, value in outputs.items()}
        mask = host.pop("mask").astype(bool)
        for key, value in host.items():
            parts.setdefault(key, []).append(value[mask])

    # One batch in flight: the next batch is copied and dispatched, and the last one's outputs
    # start their copy to the host, before they are read; the device does not idle meanwhile.
    in_flight = None
    for batch in batches:
        batch = dict(batch)
        local["file_name"].append(np.asarray(batch.pop("file_name")).astype(str))
        local["index"].append(np.asarray(batch["index"]))
        local["mask"].append(np.asarray(batch["mask"], bool))
        dispatched = eval_fn(state, sharding.to_global(batch, mesh))
        for value in dispatched.values():
            value.copy_to_host_async()
        if in_flight is not None:
            collect(in_flight)
        in_flight = dispatched
    if in_flight is not None:
        collect(in_flight)
    if not parts:
        raise ValueError("the eval split yielded no batches")
    if "index" not in parts:
        raise ValueError("eval_fn must return the batch's \"index\" (as steps.eval_step does)")
    # One gather per split (every host has the same number of batches).
    mask = gather_host_arrays(np.concatenate(local["mask"]).astype(np.int8)).astype(bool)
    names = gather_strings(np.concatenate(local["file_name"]))[mask]
    name_index = gather_host_arrays(np.concatenate(local["index"]))[mask]
    index = np.concatenate(parts.pop("index"))
    order, name_order = np.argsort(index, kind="stable"), np.argsort(name_index, kind="stable")
    if not np.array_equal(index[order], name_index[name_order]):
        raise AssertionError("the eval outputs and the hosts' file names cover different rows")
    result = {key: np.concatenate(values)[order] for key, values in parts.items()}
    result["file_name"] = names[name_order]
    return result


def gather_host_arrays(local: np.ndarray) -> np.ndarray:
    """Host-local numpy rows -> every host's rows, in process order."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def gather_strings(local: np.ndarray) -> np.ndarray:
    """Host-local strings -> the same strings from every host, in process order (whole: the
    byte width is the longest name on any host)."""
    local = np.asarray(local).astype(str)
    if jax.process_count() == 1:
        return local
    encoded = [name.encode("utf-8") for name in local.tolist()]
    width = max((len(e) for e in encoded), default=0)
    width = max(int(gather_host_arrays(np.asarray([width], np.int32)).max()), 1)
    raw = np.frombuffer(np.asarray(encoded, f"S{width}").tobytes(), np.uint8)
    gathered = gather_host_arrays(raw.reshape(len(encoded), width))
    return np.char.decode(np.ascontiguousarray(gathered).view(f"S{width}").reshape(-1), "utf-8")


def add_metrics(total: Metrics | None, new: Metrics) -> Metrics:
    return new if total is None else _add(total, new)


def compile_add_metrics(metrics: Metrics) -> None:
    """Compiles add_metrics' sum for `metrics` now (it runs once, on the device): else its
    compilation fell in the first timed interval after each start."""
    _add(metrics, metrics)


@jax.jit
def _add(a: Metrics, b: Metrics) -> Metrics:
    return jax.tree.map(jnp.add, a, b)


def jit_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    num_classes: int,
    label_smoothing: float = 0.0,
    class_weights: np.ndarray | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Metrics]]:
    """The train step compiled once for this mesh; the input state's buffers are donated."""
    step = functools.partial(
        train_step,
        graphdef=graphdef,
        tx=tx,
        num_classes=num_classes,
        label_smoothing=label_smoothing,
        class_weights=class_weights,
    )
    return jax.jit(
        step,
        in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
        out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=sharding.compiler_options(mesh),
    )


def jit_eval_step(
    graphdef: nnx.GraphDef, mesh: Mesh, *, num_classes: int
) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
    step = functools.partial(eval_step, graphdef=graphdef, num_classes=num_classes)
    return jax.jit(
        step,
        in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
        # Replicated: every host reads the whole batch's outputs from its own devices.
        out_shardings=sharding.replicated(mesh),
        compiler_options=sharding.compiler_options(mesh),
    )
