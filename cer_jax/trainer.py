"""The training loop: config -> mesh -> state -> steps -> evaluation -> checkpoints -> export.

`train_and_evaluate(config, workdir)` trains one model and returns its final metrics. Running it
again on the same workdir resumes from the latest checkpoint with the same data order. SIGTERM
(preemption) saves a checkpoint and returns cleanly; a non-finite loss stops the run with a
message and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from cer_jax import checkpointing, export, models, optim, sharding, steps, train_state
from cer_jax.metrics import classification_metrics


class ConfigError(ValueError):
    """A config value that cannot work; raised before any data is read or model built."""


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN / Inf."""


class Preemption:
    """SIGTERM sets a flag that the loop checks between steps (handlers must not do work)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def handler(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("Signal %d received: saving a checkpoint and stopping.", signum)
        self.requested = True

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks what can be checked without data or models; each error names the key and the fix."""
    models.get_factory(config.model.name)  # raises naming model.name
    sharding.check_batch_size(config.training.global_batch_size, "training.global_batch_size")
    sharding.check_batch_size(config.eval.global_batch_size, "eval.global_batch_size")
    if config.optimizer.name not in ("adamw", "adam", "sgd"):
        raise ConfigError(
            f"Unknown optimizer {config.optimizer.name!r} (config key optimizer.name); "
            "choose one of: adamw, adam, sgd."
        )
    optim.create_schedule(config, total_steps=10, steps_per_epoch=1)  # checks schedule.name
    if not config.training.get("num_steps") and not config.training.get("num_epochs"):
        raise ConfigError("Set training.num_steps or training.num_epochs (both are empty).")
    if config.checkpoint.best_split not in config.dataset.eval_splits:
        raise ConfigError(
            f"checkpoint.best_split={config.checkpoint.best_split!r} is not one of "
            f"dataset.eval_splits={tuple(config.dataset.eval_splits)}; add it there or pick one."
        )
    init = config.init
    if init.get("checkpoint") and init.get("workdir"):
        raise ConfigError("Set at most one of init.checkpoint and init.workdir.")
    if init.get("checkpoint") and not epath.Path(init.checkpoint).expanduser().is_file():
        raise ConfigError(
            f"init.checkpoint={init.checkpoint!r}: no such file. Download the pre-trained weights "
            "(see the README, 'Pre-trained weights') and pass their local path, or unset "
            "init.checkpoint to train from scratch."
        )
    if init.get("workdir"):
        if not checkpointing.workdir_path(init.workdir, checkpointing.CONFIG_FILE).exists():
            raise ConfigError(
                f"init.workdir={init.workdir!r} is not a cer_jax training workdir (no "
                f"{checkpointing.CONFIG_FILE}); point it at a finished run's --workdir."
            )
        checkpointing.best_step(init.workdir)


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


def evaluate_split(
    eval_fn: Any, state: Any, config: ml_collections.ConfigDict, info: Any, split: str, mesh: Any
) -> dict[str, Any]:
    """Exact metrics over every example of `split` (padding masked out)."""
    out = export.predict_split(eval_fn, state, config, info, split, mesh)
    scores = classification_metrics(
        out["label"], out["logits"].argmax(-1), info.num_classes, info.class_names
    )
    scores["loss"] = float(out["loss"].mean())
    return scores


def write_eval(writer: Any, step: int, split: str, scores: dict[str, Any], info: Any) -> None:
    from cer_jax.plots import confusion_matrix_image

    scalars = {f"{split}/{k}": scores[k] for k in ("loss", "accuracy", "macro_f1")}
    scalars.update({f"{split}/f1/{name}": f for name, f in scores["per_class_f1"].items()})
    writer.write_scalars(step, scalars)
    image = confusion_matrix_image(
        np.asarray(scores["confusion_matrix"]), info.class_names, f"{split} @ step {step}"
    )
    writer.write_images(step, {f"{split}/confusion_matrix": image[None]})


def _is_boundary(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains, evaluates and exports one model in `workdir`; returns its final metrics:
    {"step", "best_step", "stopped" (None | "preempted" | "halted"), "train": {...},
     "eval": {split: {accuracy, macro_f1, loss, ...} at the last evaluation},
     "export": {split: {accuracy, macro_f1, num_examples} of the best checkpoint}}."""
    config = ml_collections.ConfigDict(config.to_dict())  # resolve references, keep caller's
    validate_config(config)
    from clu import metric_writers, periodic_actions  # TensorFlow only once the config is good

    from cer_jax.data import pipeline

    info = pipeline.get_dataset_info(config)
    mesh = sharding.create_mesh()
    train_size = info.split_sizes[config.dataset.train_split]
    total_steps, steps_per_epoch = training_length(config, train_size)
    log_every = config.training.log_every_steps
    eval_every = config.training.get("eval_every_steps") or steps_per_epoch
    ckpt_every = config.checkpoint.get("every_steps") or eval_every

    schedule = optim.create_schedule(config, total_steps, steps_per_epoch)
    model = train_state.create_model(config, info.num_classes, seed=config.seed)
    graphdef, params, _ = train_state.split_model(model)
    tx = optim.create_optimizer(config, schedule, params, train_state.head_names(model))
    ckpts = checkpointing.Checkpoints(workdir, keep=config.checkpoint.keep)
    start_step = ckpts.latest_step() or 0
    if start_step == 0:
        train_state.initialise_weights(model, config)
    graphdef, state = train_state.create_train_state(model, tx)
    del model, params
    state = sharding.replicate(state, mesh)
    if start_step:
        state = ckpts.restore_latest(jax.eval_shape(lambda: state), mesh)
        logging.info("Resumed %s at step %d.", workdir, start_step)

    config.dataset_info = ml_collections.ConfigDict(
        dict(num_classes=info.num_classes, class_names=list(info.class_names),
             split_sizes=dict(info.split_sizes), total_steps=total_steps,
             steps_per_epoch=steps_per_epoch)
    )
    checkpointing.save_config(config, workdir)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start_step == 0:
        writer.write_hparams(_flat_hparams(config))
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
    batches = pipeline.train_iterator(
        config, info, global_batch_size=config.training.global_batch_size, seed=config.seed,
        start_step=start_step,
    )
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
    progress = _Progress(total_steps, start_step, config.training.global_batch_size)
    halt = config.training.get("halt_after_steps")
    result: dict[str, Any] = {"stopped": None, "train": {}, "eval": {}}
    best_value = ckpts.best_value()
    accumulated = None
    step = start_step
    try:
        with Preemption() as preemption:
            while step < total_steps:
                state, metrics = train_fn(state, sharding.to_global(next(batches), mesh))
                accumulated = steps.add_metrics(accumulated, metrics)
                step += 1
                report(step)
                stop = preemption.requested or (halt is not None and step >= halt)
                is_eval = _is_boundary(step, eval_every) or step == total_steps
                is_ckpt = _is_boundary(step, ckpt_every) or step == total_steps or stop
                if not (_is_boundary(step, log_every) or is_eval or is_ckpt):
                    continue
                # Fetch the metrics (the only host sync) and check them before any save.
                result["train"] = progress.log(writer, step, accumulated, schedule(step - 1))
                accumulated = None
                if is_eval:
                    for split in config.dataset.eval_splits:
                        scores = evaluate_split(eval_fn, state, config, info, split, mesh)
                        write_eval(writer, step, split, scores, info)
                        result["eval"][split] = scores
                        logging.info("step %d %s: accuracy %.4f macro F1 %.4f loss %.4f", step,
                                     split, scores["accuracy"], scores["macro_f1"], scores["loss"])
                    best = result["eval"][config.checkpoint.best_split]["macro_f1"]
                    if best > best_value:
                        best_value = best
                        ckpts.save_best(step, state, {checkpointing.BEST_METRIC: best})
                if is_ckpt:
                    ckpts.save_latest(step, state)
                writer.flush()
                progress.restart_clock()  # images/s counts training only, not eval or saving
                if stop:
                    result["stopped"] = "preempted" if preemption.requested else "halted"
                    logging.warning("Stopped at step %d (%s); run again to resume.", step,
                                    result["stopped"])
                    break
    finally:
        ckpts.wait()
        ckpts.close()
        writer.close()
    result["step"] = step
    if result["stopped"] is None:
        best_step, best_state = checkpointing.restore_best_state(
            workdir, jax.eval_shape(lambda: state), mesh
        )
        splits = config.export.get("splits") or export.default_splits(config)
        manifest = export.write_export(
            workdir, config, info, eval_fn, best_state, best_step, mesh, splits
        )
        result["best_step"] = best_step
        result["export"] = manifest["metrics"]
        logging.info("Exported the best checkpoint (step %d) to %s: %s", best_step,
                     os.path.join(workdir, export.EXPORT_DIR), manifest["metrics"])
    return result


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


class _Progress:
    """Host-side bookkeeping between log points: throughput, ETA, the console line."""

    def __init__(self, total_steps: int, start_step: int, global_batch_size: int):
        self.total_steps = total_steps
        self.batch = global_batch_size
        self.last_step = start_step
        self.last_time = time.perf_counter()

    def restart_clock(self) -> None:
        self.last_time = time.perf_counter()

    def log(self, writer: Any, step: int, accumulated: dict, lr: Any) -> dict[str, float]:
        sums = {k: float(v) for k, v in jax.device_get(accumulated).items()}
        if sums["nonfinite"] > 0 or not np.isfinite(sums["loss_sum"]):
            raise NonFiniteLossError(
                f"Non-finite loss or gradients between steps {self.last_step + 1} and {step} "
                f"(loss {sums['loss_sum'] / sums['count']:.4g}). Training stopped; the last good "
                "checkpoint is kept. Lower optimizer.lr, or enable clipping with "
                "optimizer.grad_clip_norm=1.0 (or use float32: model.dtype='float32')."
            )
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        metrics = {
            "train/loss": sums["loss_sum"] / sums["count"],
            "train/accuracy": sums["correct"] / sums["count"],
            "train/grad_norm": sums["grad_norm_sum"] / sums["steps"],
            "train/learning_rate": float(lr),
            "train/images_per_second": rate * self.batch,
        }
        writer.write_scalars(step, metrics)
        eta = (self.total_steps - step) / max(rate, 1e-9)
        logging.info(
            "step %d/%d (%.0f%%) loss %.4f acc %.3f lr %.3g | %.1f img/s | ETA %s",
            step, self.total_steps, 100 * step / self.total_steps, metrics["train/loss"],
            metrics["train/accuracy"], metrics["train/learning_rate"],
            metrics["train/images_per_second"], datetime.timedelta(seconds=round(eta)),
        )
        return metrics
