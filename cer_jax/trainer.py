"""The training loop: config -> checks -> mesh -> state -> steps -> evaluation -> checkpoints.

`train_and_evaluate(config, workdir)` trains one model and returns its final metrics. Running it
again on the same workdir resumes from the latest checkpoint with the same data order. SIGTERM
(preemption) on any process makes every process save the same step and return cleanly (an
evaluation due at that step is left to the resumed run, which does it first); Ctrl-C does the
same and then raises `Interrupted`, so that nothing after the run starts; a non-finite loss
stops the run with a message and leaves the last good checkpoint in place.
Everything a run will read (config, weights, every image of every split) is checked before
the first step, so a bad input never costs training time.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from cer_jax import (
    checkpointing,
    evaluate,
    export,
    models,
    optim,
    paths,
    sharding,
    steps,
    train_state,
    warm_start,
)
from cer_jax.data import pipeline
from cer_jax.errors import UserError
from cer_jax.plots import confusion_matrix_image
from tfds_rafdb import layout


class ConfigError(UserError):
    """A config value that cannot work; raised before any data is read or model built."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss or the gradients became NaN / Inf."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C after saving its step: the command line prints it as one line
    (exit status 130), and the demo's later stages do not start."""


# Why a run stops early, in rising precedence: processes agree on the largest index wanted.
STOP_REASONS = (None, "preempted", "interrupted")


class StopRequest:
    """SIGTERM (preemption) or a first Ctrl-C sets a flag that the loop reads at its next log
    step or after an evaluation, where every process agrees to save that step and stop
    (handlers must not do work). A
    second Ctrl-C raises KeyboardInterrupt at once: the steps since the last checkpoint are lost
    (with several processes, only the one pressed stops at once). An ignored SIGINT (a job
    started in the background) stays ignored."""

    def __init__(self) -> None:
        self.reason: str | None = None  # one of STOP_REASONS
        self._previous: dict[int, Any] = {}

    def agreed(self) -> str | None:
        """The stop reason of highest precedence over all processes (a collective)."""
        return STOP_REASONS[sharding.max_over_processes(STOP_REASONS.index(self.reason))]

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.reason = self.reason or "preempted"

    def _on_sigint(self, signum: int, frame: Any) -> None:
        del signum, frame
        logging.warning("Ctrl-C: saving a checkpoint at the next log step or evaluation and "
                        "stopping; press Ctrl-C again to stop at once without saving.")
        self.reason = "interrupted"
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signum, handler)


# Path keys where an empty value is no path (validate_config refuses it).
EMPTY_PATH_KEYS = (("init", "checkpoint"), ("init", "workdir"), ("dataset", "data_dir"),
                   ("dataset", "manual_dir"), ("dataset", "cache_dir"))

# The sections of a training config (configs/vit.py, manet.py, resnet50.py).
TRAINING_SECTIONS = ("model", "dataset", "input", "training", "optimizer", "eval", "checkpoint",
                     "init")


def validate_config(config: ml_collections.ConfigDict, *, resuming: bool = False) -> None:
    """Checks what can be checked without data or models; each error names the key and the fix.
    `resuming` (the workdir holds checkpoints): the init source, read only at step 0, may be
    gone (a resume on another machine)."""
    missing = [key for key in TRAINING_SECTIONS if key not in config]
    if missing:
        raise ConfigError(
            f"--config is not a training config (it has no {', '.join(missing)}): give "
            "configs/vit.py, configs/manet.py or configs/resnet50.py (configs/fusion.py is "
            "cer_jax.fuse's)."
        )
    try:
        models.get_factory(config.model.name)
        sharding.check_batch_size(config.training.global_batch_size, "training.global_batch_size")
        sharding.check_batch_size(config.eval.global_batch_size, "eval.global_batch_size")
        optim.create_schedule(config, total_steps=10, steps_per_epoch=1)  # checks schedule.name
    except ValueError as e:
        raise ConfigError(str(e)) from e
    # A key another model takes (model.name=manet on configs/vit.py) was a KeyError / TypeError
    # traceback where the model's settings are resolved.
    options = models.default_options(config.model.name)
    foreign = [key for key in config.model if key != "name" and key not in options]
    if foreign:
        raise ConfigError(
            f"model.{foreign[0]} is not an option of model {config.model.name!r} (config key "
            f"model.name), whose options are: {', '.join(sorted(options))}. Each model has its "
            "own config file: use configs/vit.py, configs/manet.py or configs/resnet50.py."
        )
    if config.optimizer.name not in optim.OPTIMIZERS:
        raise ConfigError(
            f"Unknown optimizer {config.optimizer.name!r} (config key optimizer.name); "
            f"choose one of: {', '.join(optim.OPTIMIZERS)}."
        )
    num_steps, num_epochs = config.training.get("num_steps"), config.training.get("num_epochs")
    if num_steps is None and num_epochs is None:  # a 0 is named below, not called empty
        raise ConfigError("Set training.num_steps or training.num_epochs (both are empty).")
    optim.check_optimizer_config(config.optimizer)
    pipeline.check_input_config(config.input)  # before the model is built at input.image_size
    step_counts = {
        "training.log_every_steps": config.training.log_every_steps,
        "training.num_steps": config.training.get("num_steps"),
        "training.eval_every_steps": config.training.get("eval_every_steps"),
        "training.halt_after_steps": config.training.get("halt_after_steps"),
        "checkpoint.every_steps": config.checkpoint.get("every_steps"),
    }
    for key, value in step_counts.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be a positive number of steps.")
    if config.checkpoint.keep < 1:
        raise ConfigError(f"checkpoint.keep={config.checkpoint.keep} must be >= 1.")
    if num_epochs is not None and (num_epochs < 0 or (num_epochs == 0 and not num_steps)):
        raise ConfigError(f"training.num_epochs={num_epochs} must be > 0.")
    if num_epochs is not None and not num_steps and not math.isfinite(num_epochs):
        # Else an OverflowError / ValueError traceback once the data are checked.
        raise ConfigError(f"training.num_epochs={num_epochs} must be a finite number > 0.")
    if not 0 <= config.training.label_smoothing < 1:
        raise ConfigError(
            f"training.label_smoothing={config.training.label_smoothing} must be in [0, 1).")
    if config.checkpoint.best_split == config.dataset.train_split:
        raise ConfigError(
            f"checkpoint.best_split={config.checkpoint.best_split!r} is the split the model is "
            "trained on (dataset.train_split): the best checkpoint would be the one that fits "
            "its own training images best. Choose it on a held-out split: "
            "--config.checkpoint.best_split=validation."
        )
    within = layout.SPLITS_WITHIN.get(config.dataset.train_split, ())
    if config.checkpoint.best_split in within and _is_rafdb(config.dataset.name):
        # RAF-DB's `train` holds `validation`: the same choice on training images, unannounced.
        raise ConfigError(
            f"checkpoint.best_split={config.checkpoint.best_split!r} is part of "
            f"dataset.train_split={config.dataset.train_split!r} (RAF-DB's "
            f"{config.dataset.train_split} is {' + '.join(within)}): the best checkpoint would "
            "be chosen on images the model is trained on. Train on the rest: "
            f"--config.dataset.train_split="
            f"{next(s for s in within if s != config.checkpoint.best_split)}."
        )
    if config.checkpoint.best_split not in config.dataset.eval_splits:
        raise ConfigError(
            f"checkpoint.best_split={config.checkpoint.best_split!r} is not one of "
            f"dataset.eval_splits={tuple(config.dataset.eval_splits)}; add it there or pick one."
        )
    dataset = config.dataset
    if dataset.get("folder") and dataset.name != "folder" and not resuming:
        # The folder would be ignored: the run would train on the named dataset (a :smoke
        # config's synthetic drawings) unannounced. A resume keeps what its run recorded.
        raise ConfigError(
            f"config.dataset.folder={dataset.folder!r} is read only with dataset.name='folder', "
            f"and this config's is {dataset.name!r}: add --config.dataset.name=folder to train "
            "on the folder, or drop config.dataset.folder."
        )
    if dataset.get("synthetic") and dataset.name != "folder":
        # The synthetic tree is drawn and built under cache_dir: a RAF-DB tree or TFDS build
        # named beside it would be ignored, and the run would train on drawings unannounced.
        named = [k for k in ("manual_dir", "data_dir") if dataset.get(k)]
        if named:
            raise ConfigError(
                f"config.dataset.synthetic=True (a :smoke config sets it) trains on the "
                f"built-in synthetic data, which ignores config.dataset.{named[0]}="
                f"{dataset[named[0]]!r}; add --config.dataset.synthetic=False to train on it, "
                f"or drop config.dataset.{named[0]}."
            )
    if config.input.balance == "sampling" and config.input.get("shuffle_buffer") is not None:
        # Each class's stream is shuffled whole there: the buffer would be ignored unannounced.
        raise ConfigError(
            f"input.shuffle_buffer={config.input.shuffle_buffer} is not read with "
            "input.balance='sampling', which shuffles each class's examples whole: leave it "
            "None, or choose another input.balance."
        )
    export_splits = config.export.get("splits")
    if export_splits is not None and not export_splits:
        raise ConfigError(
            "export.splits=() names no split, yet a finished run always exports (fusion reads "
            "the export): leave it None for dataset.train_split and dataset.eval_splits, or "
            "list the splits, e.g. --config.export.splits=train_fit,validation,test."
        )
    init = config.init
    # `--config.init.checkpoint=$WEIGHTS` with the variable unset read as no weights: the run
    # trained from scratch without a word (an empty data folder: TFDS's default one).
    for section, key in EMPTY_PATH_KEYS:
        if config[section].get(key) is not None and not str(config[section][key]).strip():
            fix = " to train from scratch" if section == "init" else ""
            raise ConfigError(f"config.{section}.{key} is empty (a shell variable left unset?): "
                              f"give a path, or leave the key out{fix}.")
    if init.get("checkpoint") and init.get("workdir"):
        raise ConfigError("Set at most one of init.checkpoint and init.workdir.")
    if init.get("keep_head") and not (init.get("checkpoint") or init.get("workdir")):
        raise ConfigError(
            "init.keep_head=True keeps the head of the loaded weights, but none are loaded "
            "(init.checkpoint and init.workdir are unset): the run would train from scratch. "
            "Set init.checkpoint or init.workdir, or --config.init.keep_head=False."
        )
    missing = None if resuming else missing_init_source(init)
    if missing:
        raise ConfigError(missing)


def _is_rafdb(name: str) -> bool:
    """Whether dataset.name is one of the rafdb builder's ("rafdb", "rafdb/basic:1.0.0")."""
    return str(name).split(":")[0].split("/")[0] == "rafdb"


def missing_init_source(init: ml_collections.ConfigDict) -> str | None:
    """Why init.checkpoint / init.workdir cannot be read (the message of a fresh run's error),
    or None when it can (or none is set)."""
    # A folder is read through its weights file (a Hugging Face snapshot, say).
    key = "checkpoint" if init.get("checkpoint") else "workdir"
    try:
        if init.get("checkpoint") and not epath.Path(init.checkpoint).expanduser().exists():
            return (
                f"init.checkpoint={init.checkpoint!r}: no such file or folder. Download the "
                "pre-trained weights (see the README, 'Bring pre-trained weights') and pass "
                "their path (local or gs://...), or unset init.checkpoint to train from scratch."
            )
        if init.get("workdir"):
            checkpointing.load_config(init.workdir)
            checkpointing.best_step(init.workdir)
    except checkpointing.WorkdirError as e:
        return f"init.workdir={init.workdir!r}: {e}"
    except paths.io_errors() as e:  # gs:// without access (no credentials, no network): was
        # a traceback, also on a resume, which needs no init source
        return (f"{paths.cannot_read(f'init.{key}={init[key]!r}', init[key], e)}, or unset "
                f"init.{key} to train from scratch.")
    return None


def training_length(config: ml_collections.ConfigDict, train_size: int) -> tuple[int, int]:
    """(total steps, steps per epoch) of the run."""
    batch = config.training.global_batch_size
    steps_per_epoch = train_size // batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"training.global_batch_size={batch} is larger than the {train_size} examples of "
            f"split {config.dataset.train_split!r}; lower it."
        )
    if config.training.get("num_steps"):
        return int(config.training.num_steps), steps_per_epoch
    return optim.epochs_to_steps(config.training.num_epochs, steps_per_epoch), steps_per_epoch


def check_finite(
    sums: dict[str, float], first_step: int, last_step: int, last_saved: int | None, *,
    config: ml_collections.ConfigDict,
) -> None:
    """The NaN guard: raises when any step since the last check had a non-finite loss/grad."""
    if sums["nonfinite"] > 0 or not np.isfinite(sums["loss_sum"]):
        raise NonFiniteLossError(
            f"Non-finite loss or gradients between steps {first_step} and {last_step} "
            f"(loss {sums['loss_sum'] / sums['count']:.4g}). Training stopped; "
            f"{_non_finite_hint(config, last_saved)}"
        )


def _non_finite_hint(config: ml_collections.ConfigDict, last_saved: int | None) -> str:
    """What to change, and where: a lower optimizer.lr resumes from the kept checkpoint, while
    clipping (another optimizer state) and float32 (another model.dtype) cannot resume it."""
    lr = f"Lower optimizer.lr (now {config.optimizer.lr:g})"
    clip = "optimizer.grad_clip_norm=1.0" if not config.optimizer.get("grad_clip_norm") else None
    dtype = config.model.get("dtype")
    low_precision = dtype not in (None, "auto") and np.dtype(
        train_state.compute_dtype(dtype)) != np.float32
    float32 = "model.dtype='float32'" if low_precision else None
    if last_saved:
        fresh = [f for f in (clip, float32) if f]
        later = (f"; {' and '.join(fresh)} cannot resume that checkpoint: set "
                 f"{'them' if len(fresh) > 1 else 'it'} with a new --workdir" if fresh else "")
        return (f"its checkpoint of step {last_saved} is kept. {lr} and run the same command "
                f"again to resume from it{later}.")
    return ("no checkpoint had been saved yet. " + lr
            + (f", or enable clipping with {clip}" if clip else "")
            + (f", or train in float32 ({float32}) with a new --workdir" if float32 else "")
            + ".")


def train_metrics(sums: dict[str, float], learning_rate: float,
                  head_lr_multiplier: float = 1.0) -> dict[str, float]:
    """The logged means since the last log step; with a head learning-rate multiplier (the ViT
    and ResNet50 recipes' 10x) the head's rate too, which `train/learning_rate` is not."""
    metrics = {
        "train/loss": sums["loss_sum"] / sums["count"],
        "train/accuracy": sums["correct"] / sums["count"],
        "train/grad_norm": sums["grad_norm_sum"] / sums["steps"],
        "train/learning_rate": float(learning_rate),
    }
    if head_lr_multiplier != 1.0:
        metrics["train/learning_rate_head"] = float(learning_rate) * head_lr_multiplier
    return metrics


def eval_tag_prefix(split: str) -> str:
    """The TensorBoard prefix of a split's evaluation: its name, but `eval_train` for a split
    named train, whose `train/loss` and `train/accuracy` would land on the training steps'."""
    return "eval_train" if split == "train" else split


def write_eval(writer: Any, step: int, split: str, scores: dict[str, Any], info: Any
               ) -> dict[str, np.ndarray]:
    """Writes a split's evaluation at `step`; returns the images written, by tag."""
    prefix = eval_tag_prefix(split)
    scalars = {f"{prefix}/{k}": scores[k] for k in ("loss", "accuracy", "macro_f1")}
    # A class with no example in the split, never predicted, has no F1 (None): no point.
    scalars.update({f"{prefix}/f1/{name}": f for name, f in scores["per_class_f1"].items()
                    if f is not None})
    writer.write_scalars(step, scalars)
    image = confusion_matrix_image(
        np.asarray(scores["confusion_matrix"]), info.class_names, f"{split} @ step {step}"
    )
    images = {f"{prefix}/confusion_matrix": image[None]}
    writer.write_images(step, images)
    return images


def write_best_images(writer: Any, step: int, images: dict[str, np.ndarray]) -> None:
    """The confusion matrices of a new best step again, under `<tag>_best`. TensorBoard shows
    10 images of a tag by default, a sample that always holds the latest: over a run's many
    evaluations the best step's matrices were often sampled away."""
    writer.write_images(step, {f"{tag}_best": image for tag, image in images.items()})


class Throughput:
    """Training steps/s and images/s between log points, not counting the evaluations and
    saves in between (CLU's ReportProgress counts them: its steps/s fell after every one), nor
    compilations (the trainer starts the clock after them)."""

    def __init__(self, global_batch_size: int) -> None:
        self._batch = global_batch_size
        self._step: int | None = None
        self._since = 0.0

    def resume(self, step: int) -> None:
        """Training (re)starts after `step`: the clock runs from now."""
        self._step, self._since = step, time.monotonic()

    def rates(self, step: int) -> dict[str, float]:
        """The rates since `resume`, to write at `step` (after a host sync); {} if none."""
        elapsed = time.monotonic() - self._since
        if self._step is None or step <= self._step or elapsed <= 0:
            return {}
        steps_per_sec = (step - self._step) / elapsed
        return {"steps_per_sec": steps_per_sec, "images_per_sec": steps_per_sec * self._batch}


def _is_boundary(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


def resolve_data_shards(config: ml_collections.ConfigDict, workdir: str, *,
                        resuming: bool) -> None:
    """input.num_data_shards=None becomes the resumed run's count (so its data stream goes on
    unchanged on any process count that divides it), or one shard per process; then checked.
    `resuming`: the workdir holds checkpoints."""
    saved = None
    if resuming:
        saved = checkpointing.load_config(workdir).input.get("num_data_shards")
    if config.input.get("num_data_shards") is None:
        config.input.num_data_shards = saved or jax.process_count()
    shards = config.input.num_data_shards
    pipeline.check_data_shards(shards, config.training.global_batch_size,
                               recorded_in=workdir if shards == saved else None)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
    """Every check that needs no training: config, model settings, workdir, data (all splits
    decoded once). Returns (dataset info, resolved config)."""
    config = ml_collections.ConfigDict(config.to_dict())  # resolve references, keep caller's
    # Each stage stops every process when one fails (a path that one host lacks): the others
    # would wait for it in the next collective for ever.
    with sharding.stop_together("the checks before training"):
        config, resuming = _check_run(config, workdir)
    checkpointing.check_workdir(workdir)
    with sharding.stop_together("the data checks"):
        return _check_data(config, resuming), config


def _check_run(config: ml_collections.ConfigDict, workdir: str
               ) -> tuple[ml_collections.ConfigDict, bool]:
    """prepare's checks of the config, the weights and the workdir (no data, no collective)."""
    try:
        resuming = checkpointing.holds_checkpoints(workdir)  # listed once (slow on gs://)
    except paths.io_errors() as e:  # the first access: gs:// without access was a traceback
        raise checkpointing.WorkdirError(
            f"{paths.cannot_read(f'--workdir={workdir}', workdir, e)}.") from e
    validate_config(config, resuming=resuming)
    for key in ("folder", "data_dir", "manual_dir", "cache_dir"):  # as config.json records them
        if config.dataset.get(key):
            config.dataset[key] = paths.normalized(config.dataset[key])
    missing = missing_init_source(config.init) if resuming else None
    if missing:
        key = "checkpoint" if config.init.get("checkpoint") else "workdir"
        logging.info("Resuming %s: init.%s=%s cannot be read, and need not be: an init "
                     "source is read at step 0 only (the model settings come from config.json).",
                     workdir, key, config.init[key])
    unset = not (config.init.get("checkpoint") or config.init.get("workdir"))
    if resuming and (missing or unset):
        # Its weights were loaded at step 0; the settings they implied are recorded. A resume
        # without the init source (dropped from the command) took the model's defaults: a run
        # from an AugReg .npz (tanh GELU) was refused as another run.
        warm_start.resolve_model_settings(
            config, recorded=checkpointing.load_config(workdir).model)
    else:  # a fresh start checks and loads init.checkpoint next: a pickle read here is kept
        warm_start.resolve_model_settings(config, keep_weights=not resuming)
    train_state.check_model(config)  # before the data: a bad model setting needs no dataset
    if not resuming:  # weights that do not fit: one line before the data work, not after it
        warm_start.check_initial_weights(config)
        warm_start.check_input_normalization(config)
        warm_start.check_source_run_finished(config)
    # First: an unset shard count takes the resumed run's.
    resolve_data_shards(config, workdir, resuming=resuming)
    config.input.seed = checkpointing.data_order_seed(config)  # recorded resolved
    checkpointing.check_same_run(config, workdir, resuming=resuming)
    if resuming:
        checkpointing.check_resumable(workdir)
        _keep_recorded_seed(config, workdir)
    return config, resuming


def _keep_recorded_seed(config: ml_collections.ConfigDict, workdir: str) -> None:
    """A resume with another `seed` (input.seed given, so the data order is the same): `seed`
    only initialised the model, which the resume restores, so it changes nothing; config.json
    (and so export.json and the fusion report) recorded the new one, a seed that did not make
    the model. It keeps the run's."""
    try:
        recorded = checkpointing.load_config(workdir).get("seed")
    except checkpointing.WorkdirError:
        return
    if recorded is not None and recorded != config.seed:
        logging.warning("Resuming %s: seed=%s here, %s there; the seed only initialises the "
                        "model, which the resume restores, so the run keeps seed=%s.",
                        workdir, config.seed, recorded, recorded)
        config.seed = recorded


def _check_data(config: ml_collections.ConfigDict, resuming: bool) -> Any:
    """prepare's checks of the data (every split decoded once); returns the dataset info. Its
    only collective is the vote at a TFDS dataset's first opening (sources._prepared), in which
    a process that failed before it votes through stop_together."""
    info = pipeline.get_dataset_info(config)
    splits = list(dict.fromkeys(
        [config.dataset.train_split, *config.dataset.eval_splits,
         *(config.export.get("splits") or [])]
    ))
    pipeline.validate_splits(config, info, splits)
    if not resuming:  # the head is kept at step 0 only
        warm_start.check_kept_head(config, list(info.class_names))
    return info


def create_writer(workdir: str, first_step: int) -> Any:
    """CLU's metric writer: the log, and on process 0 TensorBoard events in the workdir, which
    begin with a session START at `first_step`, the first step this run logs.

    A run killed (SIGKILL, out of memory) after its last checkpoint had logged steps that its
    resumed run logs again: TensorBoard drew both values of those steps. A START that follows
    a run's first one tells TensorBoard's loader to drop the earlier events of steps >=
    `first_step` (its purge_orphaned_data; the data server of --load_fast keeps the last value
    of a step by itself)."""
    from clu import metric_writers

    if jax.process_index() > 0:
        return metric_writers.create_default_writer(just_logging=True)
    events = metric_writers.SummaryWriter(workdir)
    _write_session_start(events, first_step)
    return metric_writers.AsyncMultiWriter([metric_writers.LoggingWriter(), events])


def _write_session_start(events: Any, step: int) -> None:
    """The START event, first in the file: TF2's summary API writes events of other kinds only,
    so it goes through TF's import_event into CLU's TF writer. Both are private: if a CLU or TF
    release moves them, training goes on without the marker (a warning says what is lost)."""
    import tensorflow as tf

    try:
        from tensorflow.python.ops import summary_ops_v2

        start = tf.compat.v1.Event(
            step=step, wall_time=time.time(),
            session_log=tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START))
        with events._summary_writer.as_default():  # CLU has no public handle on it
            summary_ops_v2.import_event(tf.constant(start.SerializeToString()))
    except (AttributeError, ImportError) as error:
        logging.warning("TensorBoard session marker not written (%s): after a kill, "
                        "`tensorboard --load_fast=false` may draw two values for the steps a "
                        "resume logs again.", error)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains, evaluates and exports one model in `workdir`; returns its final metrics:
    {"step", "best_step", "stopped" (None | "preempted" | "halted"), "train": {...},
     "eval": {split: {accuracy, macro_f1, loss, ...} at the last evaluation},
     "export": {split: {accuracy, macro_f1, num_examples} of the best checkpoint}}.
    Raises `Interrupted` once a Ctrl-C's checkpoint is saved."""
    info, config = prepare(config, workdir)
    from clu import periodic_actions  # imports TensorFlow: once checks pass

    mesh = sharding.create_mesh()
    train_size = info.split_sizes[config.dataset.train_split]
    total_steps, steps_per_epoch = training_length(config, train_size)
    log_every = config.training.log_every_steps
    eval_every = config.training.get("eval_every_steps") or steps_per_epoch
    ckpt_every = config.checkpoint.get("every_steps") or eval_every

    schedule = optim.create_schedule(config, total_steps, steps_per_epoch)
    warmup = optim.warmup_steps(config.schedule, steps_per_epoch)
    if warmup >= total_steps > 1:  # cut (a short test run of a recipe, say): not silently
        key = ("schedule.warmup_steps" if config.schedule.get("warmup_steps") is not None
               else "schedule.warmup_epochs")
        logging.warning(
            "The warm-up (%s: %d steps) is not shorter than the run's %d steps: it is cut to "
            "%d, so the learning rate reaches optimizer.lr at the last step and never decays.",
            key, warmup, total_steps, total_steps - 1)
    model = train_state.create_model(config, info.num_classes, seed=config.seed)
    graphdef, params, _ = train_state.split_model(model)
    tx = optim.create_optimizer(config, schedule, params, train_state.head_names(model))
    claim = checkpointing.TrainerClaim(workdir)  # before reading the step to resume
    ckpts = checkpointing.Checkpoints(workdir, keep=config.checkpoint.keep)
    start_step = ckpts.latest_step() or 0
    if start_step == 0:
        warm_start.load_initial_weights(model, config)
    graphdef, state = train_state.create_train_state(model, tx)
    del model, params
    state = sharding.replicate(state, mesh)
    if start_step:
        state = ckpts.restore_latest(jax.eval_shape(lambda: state), mesh, config)
        logging.info("Resumed %s at step %d.", workdir, start_step)
        used = (config.dataset.train_split, *config.dataset.eval_splits)
        _warn_if_resized(workdir, start_step, total_steps,  # before config.json is rewritten
                         {split: int(info.split_sizes[split]) for split in used})

    config.dataset_info = ml_collections.ConfigDict(
        dict(num_classes=info.num_classes, class_names=list(info.class_names),
             split_sizes=dict(info.split_sizes), total_steps=total_steps,
             steps_per_epoch=steps_per_epoch)
    )
    checkpointing.save_config(config, workdir)
    writer = create_writer(workdir, first_step=start_step + 1)
    if start_step == 0:
        writer.write_hparams(_flat_hparams(config))
    if start_step >= total_steps:  # a finished run again, or one shortened below its step
        logging.info("%s is at step %d of a %d-step run: nothing to train; exporting its best "
                     "checkpoint.", workdir, start_step, total_steps)
    else:
        logging.info(
            "Training %s (%d parameters) on %s: %d steps (%d per epoch), global batch %d on %d "
            "devices.", config.model.name, train_state.num_params(state["params"]), info.name,
            total_steps, steps_per_epoch, config.training.global_batch_size, jax.device_count(),
        )

    weights = None
    if config.input.balance == "loss_weights":
        weights = pipeline.class_weights(config, info)
    train_fn = steps.jit_train_step(
        graphdef, tx, mesh, num_classes=info.num_classes,
        label_smoothing=config.training.label_smoothing, class_weights=weights,
    )
    eval_fn = steps.jit_eval_step(graphdef, mesh, num_classes=info.num_classes)
    host_batches = pipeline.train_iterator(
        config, info, global_batch_size=config.training.global_batch_size,
        seed=config.input.seed, start_step=start_step,
    )
    batches = sharding.prefetch_to_mesh(host_batches, mesh)
    # CLU's progress and ETA in the log; the throughput written is Throughput's (training only).
    report = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=None, every_steps=log_every
    )
    throughput = Throughput(config.training.global_batch_size)
    halt = config.training.get("halt_after_steps")
    result: dict[str, Any] = {"stopped": None, "train": {}, "eval": {}}
    best_value = ckpts.best_value()
    best_at = ckpts.best.latest_step()

    def evaluate_and_keep_best(step: int) -> None:
        nonlocal best_value, best_at
        images: dict[str, np.ndarray] = {}
        for split in config.dataset.eval_splits:
            with report.timed(f"eval_{split}"):
                scores = evaluate.scores(evaluate.predict_split(
                    eval_fn, train_state.model_state(state), config, info, split, mesh), info)
            images.update(write_eval(writer, step, split, scores, info))
            result["eval"][split] = scores
            logging.info("step %d %s: accuracy %.4f macro F1 %.4f loss %.4f", step, split,
                         scores["accuracy"], scores["macro_f1"], scores["loss"])
        best = result["eval"][config.checkpoint.best_split]["macro_f1"]
        if best > best_value:
            claim.check(step)
            best_value, best_at = best, step
            ckpts.save_best(step, state, {checkpointing.BEST_METRIC: best})
        if best_at == step:  # also the best step again, after a kill before its latest save
            write_best_images(writer, step, images)
        logging.info("step %d: %s %s macro F1 %.4f at step %s (checkpoint.best_split: it "
                     "chooses best/ and the export).", step,
                     "new best" if best_at == step else "best so far",
                     config.checkpoint.best_split, best_value, best_at)

    accumulated = None
    last_checked = last_saved = start_step
    step = start_step
    try:
        if start_step and ckpts.evaluation_pending(start_step):
            # Preempted at an evaluation, which was put off, or killed before the best
            # checkpoint of this step was written: the best step is chosen as if the run had
            # never stopped.
            logging.info("Evaluating step %d again (its evaluation was put off at a preemption, "
                         "or its best checkpoint was not written).", step)
            evaluate_and_keep_best(step)
        if halt is not None and halt <= start_step < total_steps:
            # The same command again after a halt (else it trained on to the next log step).
            result["stopped"] = "halted"
            logging.warning("%s is at step %d: training.halt_after_steps=%d is reached, so "
                            "nothing is trained (raise or drop it to train on).", workdir,
                            start_step, halt)
        stop_request = StopRequest()
        with stop_request:
            while step < total_steps and result["stopped"] is None:
                state, metrics = train_fn(state, next(batches))
                accumulated = steps.add_metrics(accumulated, metrics)
                step += 1
                if step == start_step + 1:  # after the compilations
                    steps.compile_add_metrics(metrics)
                    throughput.resume(step)
                is_eval = _is_boundary(step, eval_every) or step == total_steps
                is_log = _is_boundary(step, log_every) or is_eval or step == total_steps
                if not (is_log or _is_boundary(step, ckpt_every) or step == halt):
                    report(step)
                    continue
                # Log points are where processes agree (a collective) on stopping, so that
                # every host saves the same step; the metrics fetch is the only host sync.
                stop_reason = stop_request.agreed()
                preempted = stop_reason is not None
                stop = preempted or (halt is not None and halt <= step < total_steps)
                is_ckpt = _is_boundary(step, ckpt_every) or step == total_steps or stop
                sums = {k: float(v) for k, v in jax.device_get(accumulated).items()}
                rates = throughput.rates(step)  # the steps alone: not this point's host work
                check_finite(sums, last_checked + 1, step, last_saved, config=config)
                last_checked, accumulated = step, None
                result["train"] = train_metrics(sums, schedule(step - 1),
                                                config.optimizer.head_lr_multiplier)
                writer.write_scalars(step, {**result["train"], **rates})
                report(step)
                # A preempted host has seconds left: it saves at once and the resumed run
                # evaluates this step first.
                if is_eval and not preempted:
                    evaluate_and_keep_best(step)
                    # A stop asked for during the evaluation saves this step now, not after
                    # training to the next log step (agreed again: every process evaluated).
                    stop_reason = stop_request.agreed() or stop_reason
                    stop = stop or stop_reason is not None
                    is_ckpt = is_ckpt or stop
                if is_ckpt:
                    claim.check(step)
                    ckpts.save_latest(step, state, evaluation_pending=is_eval and preempted,
                                      best_saved=best_at == step)
                    last_saved = step
                writer.flush()
                throughput.resume(step)
                if stop:
                    result["stopped"] = stop_reason or "halted"
                    logging.warning("Stopped at step %d (%s); run again to resume.", step,
                                    result["stopped"])
                    break
            # The last save is written in the background: waited for here, under the handlers,
            # a SIGTERM meanwhile is one more stop below (it killed the process mid-save,
            # losing that step and the training since the save before).
            ckpts.wait()
        # A Ctrl-C or SIGTERM after the last check (in the final evaluation or save): the step
        # is saved, so the run stops before its export, which the next run then does (a halt
        # that a SIGTERM joined is a preemption, as in the loop).
        late = stop_request.agreed()
        if late is not None:
            result["stopped"] = late
    except KeyboardInterrupt:
        kept = (f"the checkpoint of step {last_saved} is kept: run again to resume from it"
                if last_saved else "no checkpoint had been saved")
        logging.warning("Stopped by Ctrl-C after step %d; %s.", step, kept)
        raise
    finally:
        batches.close()
        host_batches.close()  # frees tf.data's threads now, so the process exits promptly
        ckpts.wait()
        ckpts.close()
        writer.close()
    result["step"] = step
    if result["stopped"] == "interrupted":
        raise Interrupted(f"stopped by Ctrl-C at step {step}, saved in {workdir}: run the same "
                          "command again to resume.")
    if result["stopped"] is None:
        claim.check(step)  # else the export could be of the other trainer's best step
        best_graphdef, best_step, best_state, _ = checkpointing.restore_best_state(workdir, mesh)
        if best_graphdef != graphdef:  # not the network trained here: compile its own step
            eval_fn = steps.jit_eval_step(best_graphdef, mesh, num_classes=info.num_classes)
        splits = export.default_splits(config)
        manifest = export.write_export(
            workdir, config, info, eval_fn, best_state, best_step, mesh, splits
        )
        result["best_step"] = best_step
        result["export"] = manifest["metrics"]
        logging.info("Exported the best checkpoint (step %d) to %s: %s", best_step,
                     export.export_dir(workdir), manifest["metrics"])
    return result


def _warn_if_resized(workdir: str, start_step: int, total_steps: int,
                     split_sizes: dict[str, int]) -> None:
    """A resume of another length than config.json records (training.num_steps / num_epochs,
    or the training split's size, changed) went on silently: its learning rate jumped onto the
    new length's schedule, and one shortened below its step ended there with exit status 0.
    So did one whose splits (`split_sizes`, this run's) changed under the same dataset name
    (images added to a dataset.folder, another synthetic size): it went on training, and
    choosing its best checkpoint, on other examples than before."""
    try:
        info = checkpointing.load_config(workdir).get("dataset_info") or {}
    except checkpointing.WorkdirError:  # no config.json: nothing recorded to compare
        return
    sizes = info.get("split_sizes") or {}
    changed = [f"{split} {sizes[split]} there, {size} here" for split, size in split_sizes.items()
               if sizes.get(split) is not None and int(sizes[split]) != size]
    if changed:
        logging.warning("Resuming %s at step %d: its data changed since config.json was written "
                        "(examples per split: %s); it goes on training, and choosing its best "
                        "checkpoint, on other examples than before. Resume with the data it was "
                        "trained on, or train anew in another --workdir.", workdir, start_step,
                        "; ".join(changed))
    recorded = info.get("total_steps")
    if recorded is None or recorded == total_steps:
        return
    then = ("it ends here: nothing is trained, its best checkpoint is exported"
            if start_step >= total_steps else
            f"the learning-rate schedule is now the one of a {total_steps}-step run")
    logging.warning("Resuming %s at step %d: it was a %d-step run and is now a %d-step one "
                    "(training.num_steps / num_epochs, or the size of dataset.train_split, "
                    "changed); %s.", workdir, start_step, recorded, total_steps, then)


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                visit(f"{prefix}.{key}" if prefix else key, sub)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        elif value is not None:
            flat[prefix] = str(value)

    visit("", config.to_dict())
    return flat
