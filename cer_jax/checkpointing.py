"""Orbax checkpoints of the train-state pytree in a workdir, and restoring models from it.

    <workdir>/config.json    the resolved config (with dataset_info: num_classes, class_names)
    <workdir>/checkpoints/   the latest `checkpoint.keep` steps, for resuming
    <workdir>/best/          the single best step by validation macro F1, for export / fusion

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames), so an
interrupted save never leaves a half-written step behind.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from cer_jax import sharding
from cer_jax.train_state import TrainState

CONFIG_FILE = "config.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
BEST_METRIC = "macro_f1"


class WorkdirError(ValueError):
    """A workdir that lacks what is asked of it (config, best checkpoint, ...)."""


def _best_options(read_only: bool = False) -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m[BEST_METRIC], best_mode="max", read_only=read_only
    )


def workdir_path(workdir: str | os.PathLike[str], *parts: str) -> epath.Path:
    """An absolute path inside the workdir; gs:// and other remote workdirs work too."""
    path = epath.Path(workdir)
    if "://" not in os.fspath(workdir):
        path = path.absolute()
    return path.joinpath(*parts)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        workdir_path(workdir).mkdir(parents=True, exist_ok=True)
        tmp = workdir_path(workdir, CONFIG_FILE + ".tmp")
        tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
        tmp.replace(workdir_path(workdir, CONFIG_FILE))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = workdir_path(workdir, CONFIG_FILE)
    if not path.exists():
        raise WorkdirError(
            f"{path} not found: {workdir!r} is not a cer_jax training workdir "
            "(train one with `python -m cer_jax.train --config=... --workdir=...`)."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def with_sharding(abstract: Any, mesh: Mesh) -> Any:
    """A restore target: each leaf's shape and dtype, replicated over the mesh."""
    target = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target), abstract)


class Checkpoints:
    """The latest-N manager (resume) and the best-by-validation manager of one workdir."""

    def __init__(self, workdir: str, keep: int):
        self.latest = ocp.CheckpointManager(
            workdir_path(workdir, LATEST_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self.best = ocp.CheckpointManager(workdir_path(workdir, BEST_DIR), options=_best_options())

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_value(self) -> float:
        step = self.best.latest_step()
        if step is None:
            return float("-inf")
        return float((self.best.metrics(step) or {}).get(BEST_METRIC, float("-inf")))

    def save_latest(self, step: int, state: TrainState) -> None:
        if self.latest.latest_step() != step:
            self.latest.save(step, args=ocp.args.StandardSave(state))

    def save_best(self, step: int, state: TrainState, metrics: dict[str, float]) -> None:
        self.best.save(
            step,
            args=ocp.args.StandardSave(state),
            metrics={k: float(v) for k, v in metrics.items()},
            force=True,
        )

    def restore_latest(self, abstract: TrainState, mesh: Mesh) -> TrainState:
        step = self.latest.latest_step()
        return self.latest.restore(
            step, args=ocp.args.StandardRestore(with_sharding(abstract, mesh))
        )

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def best_step(workdir: str) -> int:
    path = workdir_path(workdir, BEST_DIR)
    step = None
    if path.is_dir():
        with ocp.CheckpointManager(path, options=_best_options(read_only=True)) as manager:
            step = manager.latest_step()
    if step is None:
        raise WorkdirError(
            f"No best checkpoint in {path}: the run in {workdir!r} has not evaluated yet "
            "(train it longer, or lower training.eval_every_steps)."
        )
    return step


def restore_best_state(workdir: str, abstract: TrainState, mesh: Mesh) -> tuple[int, TrainState]:
    step = best_step(workdir)
    path = workdir_path(workdir, BEST_DIR)
    with ocp.CheckpointManager(path, options=_best_options(read_only=True)) as manager:
        state = manager.restore(step, args=ocp.args.StandardRestore(with_sharding(abstract, mesh)))
    return step, state


def restore_best(
    workdir: str, mesh: Mesh
) -> tuple[nnx.GraphDef, int, TrainState, ml_collections.ConfigDict]:
    """graphdef, step, train state and config of the workdir's best checkpoint."""
    from cer_jax import optim
    from cer_jax.train_state import abstract_train_state, create_model, split_model

    config = load_config(workdir)
    num_classes = int(config.dataset_info.num_classes)
    params = jax.eval_shape(lambda: split_model(create_model(config, num_classes, seed=0))[1])
    # The optimizer state's structure does not depend on the schedule's length.
    tx = optim.create_optimizer(config, optim.create_schedule(config, 1, 1), params)
    graphdef, abstract = abstract_train_state(config, num_classes, tx)
    step, state = restore_best_state(workdir, abstract, mesh)
    return graphdef, step, state, config


def restore_best_model(workdir: str) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The model of the workdir's best checkpoint, rebuilt from its saved config."""
    from cer_jax.train_state import merge_model

    graphdef, _, state, config = restore_best(workdir, sharding.create_mesh())
    return merge_model(graphdef, state["params"], state["rest"]), config
