"""Orbax checkpoints in a workdir, and restoring a model from its best step.

    <workdir>/config.json    the resolved config (with dataset_info: num_classes, class_names)
    <workdir>/checkpoints/   the latest `checkpoint.keep` train states, for resuming
    <workdir>/best/          the model state ({"params", "rest"}, no optimizer) of the step with
                             the best validation macro F1, for export, fusion and init.workdir
    <workdir>/trainer.json   which trainer (host, pid, start time) last started on the workdir

Restoring a model therefore never rebuilds an optimizer: a workdir trained with any optimizer
or head learning rate restores the same way. Saves are asynchronous and atomic (Orbax writes to
a temporary directory and renames it; on gs://, which renames no folder at once, it writes the
step's folder and commits it with a commit_success.txt last), so an interrupted save never
leaves half a step that a resume or a listing here would take.
Every path goes through etils epath, so a gs:// workdir works.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cer_jax import paths, sharding, train_state
from cer_jax.errors import UserError

CONFIG_FILE = "config.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
EXPORT_DIR, EXPORT_FILE = "export", "export.json"  # written by cer_jax.export
BEST_METRIC = "macro_f1"
EVALUATION_PENDING = "evaluation_pending"  # latest-checkpoint metadata: see save_latest
BEST_SAVED = "best_saved"  # latest-checkpoint metadata: see save_latest
TRAINER_FILE = "trainer.json"  # see TrainerClaim


class WorkdirError(UserError):
    """A workdir that lacks what is asked of it, or holds another run."""


def _best_options(read_only: bool = False) -> ocp.CheckpointManagerOptions:
    if read_only:  # what a reader may not set, left unset (Orbax warns otherwise)
        # No root metadata: its write ends in a barrier of every process, and a reader (a best
        # step read on one host, a failed check elsewhere) must not be a collective.
        return ocp.CheckpointManagerOptions(
            best_fn=_best_metric, best_mode="max", read_only=True, save_interval_steps=0,
            create=False, save_root_metadata=False,
        )
    return ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=_best_metric, best_mode="max",
        multiprocessing_options=_barriers(BEST_DIR), cleanup_tmp_directories=True,
    )


def _barriers(prefix: str) -> ocp.options.MultiprocessingOptions:
    """Own barrier names per manager: the latest and the best manager may save the same step at
    once, and on several processes Orbax's barriers are named by step alone otherwise."""
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix)


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def workdir_path(workdir: str | os.PathLike[str], *parts: str) -> epath.Path:
    """An absolute path inside the workdir; gs:// and other remote workdirs work too."""
    path = epath.Path(workdir)
    if "://" not in os.fspath(workdir):
        path = path.expanduser().absolute()
    return path.joinpath(*parts)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        workdir_path(workdir).mkdir(parents=True, exist_ok=True)
        paths.write_text_atomically(workdir_path(workdir, CONFIG_FILE),
                                    config.to_json_best_effort(indent=2, sort_keys=True))


def check_workdir(workdir: str) -> None:
    """Before any data is read: process 0 writes a file in the workdir, and every other process
    must find it there. An unwritable workdir failed only at Orbax's first folder, after the
    data were decoded, in a traceback; on a folder of each host's own disk process 0 resumed
    alone, and Orbax's saves waited 10 minutes for folders only process 0 had made. A workdir
    that did not exist is removed again (a data error later leaves nothing behind)."""
    token = random.getrandbits(31)
    if jax.process_count() > 1:
        token = int(multihost_utils.broadcast_one_to_all(np.int32(token)))
    folder = workdir_path(workdir)
    probe = folder / f".probe-{token:08x}"
    made = False
    try:
        with sharding.stop_together("the check of --workdir"):
            if jax.process_index() == 0:
                existed = folder.exists()
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    made = not existed
                    probe.write_text("")
                except paths.io_errors() as error:
                    raise WorkdirError(
                        f"--workdir={workdir} cannot be written ({paths.error_reason(error)}): "
                        "give a folder this user may write (local, gs://... or a shared "
                        "filesystem)."
                    ) from error
        with sharding.stop_together("the check of --workdir"):
            if not probe.exists():
                raise WorkdirError(
                    f"--workdir={workdir} is not shared by every process: process "
                    f"{jax.process_index()} does not see the file that process 0 wrote there "
                    "(each host has a folder of its own). Give a path that every host reads "
                    "and writes: gs://... or a shared filesystem.")
    finally:
        if jax.process_index() == 0:
            probe.unlink(missing_ok=True)
            if made and not paths.is_remote(workdir):  # (gs:// has no folder objects)
                with contextlib.suppress(OSError):  # another writer's file there: keep it
                    folder.rmdir()


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


def eval_preprocessing(input_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings of `config.input` that the evaluation view reads, and no other.

    What the best checkpoint, the export and the ensemble artefact were made with: a resumed
    run must keep them, and predict feeds a member exactly so. `resize_size` is there only for
    the "resize_crop" evaluation, the one that reads it.
    """
    cfg = input_config
    settings: dict[str, Any] = {
        "image_size": int(cfg.image_size),
        "normalization": str(cfg.normalization),
        "eval_resize": str(cfg.eval_resize),
    }
    if settings["eval_resize"] != "resize":
        settings["resize_size"] = int(cfg.resize_size)
    return settings


# What must be equal for a workdir's checkpoints to belong to a run of this config: the model,
# its data, and how evaluation (and so the export and the ensemble artefact) feeds it images.
_IDENTITY_KEYS = ("member", "model", "dataset.name", "dataset.folder", "dataset.train_split")
# What the resumed data stream depends on: its position (step x batch, dealt over the shards)
# and the order it skips to (the seed's shuffles, the shuffle buffer, class-balanced sampling).
# With another value the resumed epoch would repeat some examples and miss others. Compared
# when the workdir recorded them (a workdir from before a key existed resumes as it did).
# input.seed is compared as `data_order_seed` (in a workdir from before that key, `seed` was
# the data order's seed; else `seed` only initialised the model, which a resume restores).
_DATA_ORDER_KEYS = ("training.global_batch_size", "input.num_data_shards", "input.seed",
                    "input.shuffle_buffer", "input.balance")
# What chose best/: each evaluation must beat its macro F1 on this split. Another split would
# be compared with the recorded one's F1 (a validation best against test scores), choosing
# best/ and the export by neither split. Compared when recorded, as the data order keys.
_SELECTION_KEYS = ("checkpoint.best_split",)
# The sections whose settings shape the train state (optimizer state, parameters).
_RESTORED_SECTIONS = ("optimizer", "model")


def data_order_seed(config: Any) -> int | None:
    """The seed of a run's data order and augmentations (a config or a config.json's dict):
    input.seed, or where that is None or not recorded (a workdir from before it), `seed`."""
    seed = (config.get("input") or {}).get("seed")
    return config.get("seed") if seed is None else seed


_ABSENT = object()


def _flat(config: ml_collections.ConfigDict | dict, keys: tuple[str, ...]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    as_dict = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                visit(f"{prefix}.{key}", sub)
        else:
            flat[prefix] = list(value) if isinstance(value, tuple) else value

    for key in keys:
        node: Any = as_dict
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        visit(key, node)
    return flat


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'KEY=SAVED there, WANTED here' for each flat key whose values differ."""
    return [f"{key}={saved.get(key)!r} there, {wanted.get(key)!r} here"
            for key in sorted(set(saved) | set(wanted)) if saved.get(key) != wanted.get(key)]


def _identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    identity = _flat(config, _IDENTITY_KEYS)
    identity["dataset.folder"] = paths.normalized(identity.get("dataset.folder"))
    eval_view = eval_preprocessing(config.input)
    identity.update({f"input.{key}": value for key, value in eval_view.items()})
    return identity


def check_same_run(config: ml_collections.ConfigDict, workdir: str, *,
                   resuming: bool | None = None) -> None:
    """Refuses to resume a workdir whose checkpoints come from another model, label space,
    evaluation preprocessing, data order or best-checkpoint split (or that is a file).
    `resuming`: whether the workdir holds checkpoints, if the caller listed them already
    (None: listed here)."""
    blocker = paths.file_in_the_way(workdir)
    if blocker is not None:
        raise WorkdirError(f"--workdir={workdir}: {blocker} is a file, not a folder; give a "
                           "folder, a new one or a run to resume.")
    path = workdir_path(workdir, CONFIG_FILE)
    if not path.exists():
        return
    if not (holds_checkpoints(workdir) if resuming is None else resuming):
        # A run stopped before its first save (a non-finite loss, a Ctrl-C during compilation)
        # left only its config and events: nothing to resume, so any config starts anew there.
        logging.info("%s holds no checkpoint: starting anew with this config.", workdir)
        return
    saved_config = ml_collections.ConfigDict(json.loads(path.read_text()))
    saved, wanted = _identity(saved_config), _identity(config)
    recorded = saved_config.to_dict()
    for key in (*_DATA_ORDER_KEYS, *_SELECTION_KEYS):
        if key == "input.seed":
            saved[key], wanted[key] = data_order_seed(recorded), data_order_seed(config)
            continue
        node: Any = recorded
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        # Not recorded (an older workdir), or a shard count recorded as None ("auto"): the
        # trainer resumes with the count it finds there, so there is nothing to compare.
        if node is _ABSENT or (node is None and key == "input.num_data_shards"):
            continue
        # Class-balanced sampling reads no shuffle buffer (a workdir from before that was
        # refused may record one): the trainer now refuses any but None there.
        if key == "input.shuffle_buffer" and config.input.get("balance") == "sampling":
            continue
        saved[key], wanted[key] = node, _flat(config, (key,))[key]
    differing = _differences(saved, wanted)
    if differing:
        raise WorkdirError(
            f"--workdir={workdir} holds checkpoints of another run ({'; '.join(differing)}). "
            "Resume with the settings it was trained with, use a new --workdir, or delete this "
            "one to start over."
        )


class Checkpoints:
    """The latest-N train states (resume) and the best model state of one workdir.

    A save cut short (killed in a preemption's grace period) leaves Orbax's temporary folder
    (on gs://, a step folder without commit_success.txt), a whole train state that no later
    save of another step removes: each manager deletes them when it opens."""

    def __init__(self, workdir: str, keep: int):
        self.workdir = workdir
        self.latest = ocp.CheckpointManager(
            workdir_path(workdir, LATEST_DIR),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, multiprocessing_options=_barriers(LATEST_DIR),
                cleanup_tmp_directories=True,
            ),
        )
        self.best = ocp.CheckpointManager(workdir_path(workdir, BEST_DIR), options=_best_options())

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_value(self) -> float:
        step = self.best.latest_step()
        if step is None:
            return float("-inf")
        return float((self.best.metrics(step) or {}).get(BEST_METRIC, float("-inf")))

    def save_latest(
        self, step: int, state: train_state.TrainState, *, evaluation_pending: bool = False,
        best_saved: bool = False,
    ) -> None:
        """`evaluation_pending`: `step` is an evaluation step that was skipped (preemption);
        the resumed run evaluates it first (`evaluation_pending()`). `best_saved`: `step` was
        also saved as the best; both saves are written in the background, so a kill (SIGKILL,
        a lost host) may commit this one without the best, and the resumed run then evaluates
        `step` again rather than go on with an earlier best."""
        _reload(self.latest)
        if self.latest.latest_step() != step:
            metadata = {key: True for key, flag in ((EVALUATION_PENDING, evaluation_pending),
                                                     (BEST_SAVED, best_saved)) if flag}
            self.latest.save(step, args=ocp.args.StandardSave(state),
                             custom_metadata=metadata or None)

    def evaluation_pending(self, step: int) -> bool:
        """Whether latest checkpoint `step` was saved in place of its evaluation."""
        return _evaluation_pending(self.workdir, step)

    def save_best(
        self, step: int, state: train_state.TrainState, metrics: dict[str, float]
    ) -> None:
        """Saves `step` as the best checkpoint. A run killed (not stopped) after its best step
        was committed but before its latest checkpoint reached that step evaluates the step
        again when resumed; scoring higher there, it replaces it (Orbax refuses a step twice,
        `force` or not, so the resume would fail there every time)."""
        _reload(self.best)
        if step in self.best.all_steps():
            self.best.delete(step)
        self.best.save(
            step,
            args=ocp.args.StandardSave(train_state.model_state(state)),
            metrics={k: float(v) for k, v in metrics.items()},
            force=True,
        )

    def restore_latest(
        self, abstract: train_state.TrainState, mesh: Mesh,
        config: ml_collections.ConfigDict | None = None,
    ) -> train_state.TrainState:
        """`config`: this run's, whose optimizer and model settings that differ from the
        workdir's config.json a failed restore names (which of them changed the state's
        structure, clipping or a head learning rate, say, is not known here)."""
        step = self.latest.latest_step()
        try:
            return self.latest.restore(
                step, args=ocp.args.StandardRestore(with_sharding(abstract, mesh))
            )
        except ValueError as e:
            changed = self._changed_settings(config) if config is not None else ""
            raise WorkdirError(
                f"Cannot resume {workdir_path(self.workdir, LATEST_DIR)} at step {step}: its "
                "train state does not fit this config (the optimizer or model settings changed "
                f"since it was saved{changed}). Resume with the config it was trained with, or "
                "use a new --workdir."
            ) from e

    def _changed_settings(self, config: ml_collections.ConfigDict) -> str:
        """'; its config.json has optimizer.x=1 there, 2 here; ...', or '' (none recorded)."""
        try:
            saved = _flat(load_config(self.workdir), _RESTORED_SECTIONS)
        except WorkdirError:
            return ""
        differing = _differences(saved, _flat(config, _RESTORED_SECTIONS))
        return f"; its config.json differs in {'; '.join(differing)}" if differing else ""

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


class TrainerClaim:
    """One trainer per workdir, the last one started. Two trainers on one workdir (a command run
    twice, a job requeued while the first still ran) both trained and saved there: the later one
    died in an Orbax traceback at a step the other had saved, best/ held a step of each run, and
    the export could be either run's. Each trainer records itself in trainer.json when it starts;
    before each save it reads the file back (process 0; every process learns the answer), and
    a trainer that finds another one there stops in one line without saving, leaving the
    workdir to the newer one, which resumed from the checkpoints saved before it started."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.path = workdir_path(workdir, TRAINER_FILE)
        self.record = {"token": f"{random.getrandbits(63):016x}", "host": socket.gethostname(),
                       "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        if jax.process_index() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staged = self.path.parent / f".{TRAINER_FILE}.{self.record['token']}.tmp"
            staged.write_text(json.dumps(self.record))
            staged.replace(self.path)

    def _newer(self) -> dict[str, Any] | None:
        """The record of another trainer that started here since, or None (this one's, or none
        readable: a workdir copied or cleaned by hand is no other trainer)."""
        try:
            record = json.loads(self.path.read_text())
        except (*paths.io_errors(), ValueError):
            return None
        if not isinstance(record, dict) or record.get("token") in (None, self.record["token"]):
            return None
        return record

    def check(self, step: int) -> None:
        """Raises WorkdirError on every process when another trainer started on the workdir;
        a collective: every process calls it before the same saves."""
        newer = self._newer() if jax.process_index() == 0 else None
        if not sharding.any_process(newer is not None):
            return
        who = (f" (host {newer.get('host')}, pid {newer.get('pid')}, started "
               f"{newer.get('started')})" if newer else "")
        raise WorkdirError(
            f"Another trainer started on --workdir={self.workdir} after this one{who}: two "
            "trainers there would overwrite each other's checkpoints. This one stops at step "
            f"{step}, saving nothing more, and leaves the workdir to the other, which resumed from "
            "its checkpoints; to train two runs at once, give each its own --workdir.")


def _reload(manager: ocp.CheckpointManager) -> None:
    """The manager's steps as they are on disk now, once its own last save is committed: a
    trainer that took a workdir over (TrainerClaim) read them while the older one might still
    save one more step, which its own save of that step then failed on (Orbax's traceback)."""
    manager.wait_until_finished()
    manager.reload()


def holds_checkpoints(workdir: str) -> bool:
    """Whether a train state or a best model state was committed there: not only a save cut
    short (Orbax's temporary folder; on gs://, where Orbax cannot rename a folder at once, a
    step folder without its commit_success.txt)."""
    folders = (workdir_path(workdir, name) for name in (LATEST_DIR, BEST_DIR))
    return any(_holds_committed_step(folder) for folder in folders)


def holds_best_checkpoint(workdir: str) -> bool:
    """Whether a best model state was committed there (as holds_checkpoints)."""
    return _holds_committed_step(workdir_path(workdir, BEST_DIR))


def _holds_committed_step(folder: epath.Path) -> bool:
    return folder.is_dir() and ocp.path.step.any_checkpoint_step(folder) is not None


def latest_saved_step(workdir: str) -> int | None:
    """The newest committed train state's step, as Orbax would resume it (read without an Orbax
    manager, which would make folders); None without one."""
    folder = workdir_path(workdir, LATEST_DIR)
    if not folder.is_dir():
        return None
    return max(ocp.path.step.checkpoint_steps(folder), default=None)


def _evaluation_pending(workdir: str, step: int) -> bool:
    """Whether latest checkpoint `step` was saved in place of its evaluation, or as the best
    step whose best checkpoint was never committed (`save_latest`): best/ holds no step from
    `step` on."""
    try:
        metadata = ocp.metadata.get_step_metadata(workdir_path(workdir, LATEST_DIR, str(step)))
    except ValueError:  # a step folder without Orbax's metadata file: saved with no flag
        return False
    flags = metadata.custom_metadata or {}
    if flags.get(EVALUATION_PENDING):
        return True
    # A best step after `step` means the run went on past it, its best save committed first
    # (Orbax saves one at a time), then replaced by the later better step.
    best = workdir_path(workdir, BEST_DIR)
    return bool(flags.get(BEST_SAVED)) and not (
        best.is_dir() and max(ocp.path.step.checkpoint_steps(best), default=-1) >= step)


def check_resumable(workdir: str) -> None:
    """Refuses a workdir with an export and a best checkpoint but no train state (checkpoints/
    deleted to save space once the run was over): training there started a new run at step 0
    beside the old best checkpoint, which its evaluations then had to beat to replace, so that
    hours later the export could be either run's. A run killed before its first train state was
    saved has no export, and starts again."""
    if latest_saved_step(workdir) is not None:
        return
    export_file = workdir_path(workdir, EXPORT_DIR, EXPORT_FILE)
    if holds_best_checkpoint(workdir) and export_file.exists():
        raise WorkdirError(
            f"{workdir} holds an export and a best checkpoint but no train state to resume "
            f"({workdir_path(workdir, LATEST_DIR)} is empty or deleted): training here would "
            "start another run beside them. Use it as it is (python -m cer_jax.fuse, "
            "cer_jax.predict), or train anew with a new --workdir.")


def stopped_early(workdir: str) -> str | None:
    """Where a run stopped before its end (halted, preempted, or still training), e.g. "at step
    4 of 8": its best checkpoint is not the one its finished run would give. A run preempted in
    its last log interval saved its last step without evaluating it (the resumed run does, then
    exports). None when it finished, or when nothing says (no config.json length, no train
    state)."""
    try:
        total = int(load_config(workdir).dataset_info.total_steps)
    except (WorkdirError, AttributeError, KeyError, TypeError):
        return None
    latest = latest_saved_step(workdir)
    if latest is None or latest > total:
        return None
    if latest < total:
        return f"at step {latest} of {total}"
    if _evaluation_pending(workdir, latest) and not workdir_path(
            workdir, EXPORT_DIR, EXPORT_FILE).exists():
        return f"at step {latest} of {total} before evaluating it"
    return None


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


def restore_best_state(
    workdir: str, mesh: Mesh
) -> tuple[nnx.GraphDef, int, train_state.ModelState, ml_collections.ConfigDict]:
    """graphdef, step, model state (replicated on `mesh`) and config of the best checkpoint.

    A run still training may save a better step meanwhile, deleting the one being read (Orbax
    then failed with "Must provide `args` of type `Composite`..."): the new best is read instead
    (the export and the ensemble record the step they got); with several processes, which
    restore together, that is one line instead."""
    config = load_config(workdir)
    graphdef, abstract = train_state.abstract_model_state(
        config, int(config.dataset_info.num_classes)
    )
    step = best_step(workdir)
    if jax.process_count() > 1:
        # The newest any process saw: read at other moments while its run saved a better step,
        # the processes restored different steps into one replicated model, silently.
        step = sharding.max_over_processes(step)
    path = workdir_path(workdir, BEST_DIR)
    for _ in range(3):
        try:
            with ocp.CheckpointManager(path, options=_best_options(read_only=True)) as manager:
                state = manager.restore(
                    step, args=ocp.args.StandardRestore(with_sharding(abstract, mesh)))
            return graphdef, step, state, config
        except (ValueError, OSError):
            newer = best_step(workdir)
            if newer == step:  # not replaced: a damaged checkpoint, said as Orbax says it
                raise
        if jax.process_count() > 1:
            break
        logging.info("The best checkpoint of %s went from step %d to %d while it was read (its "
                     "run is still training): reading step %d.", workdir, step, newer, newer)
        step = newer
    raise WorkdirError(
        f"The best checkpoint of {workdir} was replaced while it was read (its run is still "
        "training and saving better steps): run this again, or once that training has "
        "finished.")


def restore_best_model(workdir: str) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The model of the workdir's best checkpoint, rebuilt from its saved config: a full copy on
    each process (every process must call it: Orbax restores collectively)."""
    graphdef, _, state, config = restore_best_state(workdir, sharding.local_mesh())
    return train_state.merge_model(graphdef, state["params"], state["rest"]), config
