"""Optimizer and learning-rate schedule from `config.optimizer` / `config.schedule`.

Lengths in the config are in epochs (or steps where the key says so); `steps_per_epoch`
converts them, so a recipe reads the same whatever the batch size or split size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import ml_collections
import optax

from cer_jax.errors import UserError

OPTIMIZERS = ("adamw", "adam", "sgd")


class OptimConfigError(UserError):
    """A config.optimizer / config.schedule value that cannot be used."""


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Steps for `epochs` (fractions round up). An epoch is `train_size // batch` steps, as a
    PyTorch loader with drop_last=True counts it; the stream itself runs on across epochs, so
    every example is seen. Rounded to 9 places first: 1.1 x 100 is 110.00000000000001 in
    floating point, which is 110 steps, not 111."""
    return int(math.ceil(round(epochs * steps_per_epoch, 9)))


def warmup_steps(sched: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The warm-up's steps as configured (create_schedule cuts one as long as the run to its
    length minus one step): schedule.warmup_steps when set (0 included: no warm-up), else
    schedule.warmup_epochs."""
    if sched.get("warmup_steps") is not None:
        return int(sched.warmup_steps)
    return epochs_to_steps(sched.get("warmup_epochs") or 0.0, steps_per_epoch)


def create_schedule(
    config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """The learning rate at each step: linear warm-up, then the configured decay."""
    lr = float(config.optimizer.lr)
    if not 0 < lr < math.inf:
        raise OptimConfigError(f"optimizer.lr={config.optimizer.lr} must be a finite number > 0.")
    sched = config.schedule
    for key in ("warmup_steps", "warmup_epochs"):
        value = sched.get(key) or 0
        if not 0 <= value < math.inf:  # NaN or infinity: a ValueError / OverflowError later
            number = "" if value < 0 else " a finite number"
            raise OptimConfigError(f"schedule.{key}={sched[key]} must be{number} >= 0.")
    warmup = min(warmup_steps(sched, steps_per_epoch), max(total_steps - 1, 0))
    name = sched.name
    _check_decay(sched)
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1),
            end_value=lr * sched.end_lr_fraction,
        )
    # The decays below count steps from the end of the warm-up (join_schedules shifts them).
    if name == "step":
        every = max(epochs_to_steps(sched.step_every_epochs, steps_per_epoch), 1)
        boundaries = {b: sched.step_factor for b in range(every, total_steps - warmup, every)}
        decay = optax.piecewise_constant_schedule(lr, boundaries)
    elif name == "exponential":
        # Once per epoch, as PyTorch's ExponentialLR stepped at each epoch's end.
        decay = optax.exponential_decay(
            lr, transition_steps=max(steps_per_epoch, 1), decay_rate=sched.decay_per_epoch,
            staircase=True,
        )
    elif name == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise OptimConfigError(
            f"Unknown schedule {name!r} (config key schedule.name). "
            "Choose one of: cosine, step, exponential, constant."
        )
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


# The key each decay reads, the values that decay (the lr never grows), and how to say so.
_DECAY_KEYS = {
    "cosine": ("end_lr_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"),
    "step": ("step_factor", lambda v: 0 < v <= 1, "in (0, 1]"),
    "exponential": ("decay_per_epoch", lambda v: 0 < v <= 1, "in (0, 1]"),
}


def _check_decay(sched: ml_collections.ConfigDict) -> None:
    """Rejects a decay that would grow the learning rate or zero it at once; only the keys the
    chosen schedule reads are checked."""
    if sched.name in _DECAY_KEYS:
        key, ok, allowed = _DECAY_KEYS[sched.name]
        if not ok(sched[key]):
            raise OptimConfigError(
                f"schedule.{key}={sched[key]} must be {allowed} (schedule.name={sched.name!r})."
            )
    every = sched.step_every_epochs
    if sched.name == "step" and not 0 < every < math.inf:
        number = "" if every <= 0 else " a finite number"
        raise OptimConfigError(f"schedule.step_every_epochs={every} must be{number} > 0.")


def decay_mask(params: Mapping) -> Mapping:
    """True for the weights that get weight decay: the dense and convolution kernels only, as
    big_vision's `.*/kernel$` (not norm scales, biases, even the [heads, head_dim] ones of
    attention, nor a ViT's class token or position embedding, which timm excludes too)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def head_mask(params: Mapping, head_names: tuple[str, ...]) -> Mapping:
    """True for the parameters of the classification head(s) (top-level names in HEAD_NAMES)."""
    return {
        key: jax.tree.map(lambda _, is_head=key in head_names: is_head, sub)
        for key, sub in params.items()
    }


def check_optimizer_config(opt: ml_collections.ConfigDict) -> None:
    """Rejects config.optimizer values that would train silently wrong (a negative decay or
    clipping norm, a momentum of 1 or more), naming the key."""
    # An infinite decay or head multiplier trained to NaN, which the guard then blamed on lr.
    checks = [
        ("weight_decay", 0 <= opt.weight_decay < math.inf, "a finite number >= 0"),
        ("head_lr_multiplier", 0 < opt.head_lr_multiplier < math.inf, "a finite number > 0"),
        ("grad_clip_norm", opt.grad_clip_norm is None or opt.grad_clip_norm > 0,
         "> 0, or None for no clipping"),
        ("momentum", 0 <= (opt.momentum or 0) < 1, "in [0, 1)"),
        ("b1", 0 <= opt.b1 < 1, "in [0, 1)"),
        ("b2", 0 <= opt.b2 < 1, "in [0, 1)"),
        ("eps", opt.eps > 0, "> 0"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise OptimConfigError(f"optimizer.{key}={opt[key]} must be {allowed}.")
    # optax then drops the momentum, Nesterov's with it: plain SGD, unannounced (PyTorch refuses).
    if opt.name == "sgd" and opt.get("nesterov") and not opt.momentum:
        raise OptimConfigError(
            f"optimizer.nesterov=True needs a momentum (optimizer.momentum={opt.momentum}): set "
            "optimizer.momentum, e.g. 0.9, or optimizer.nesterov=False for plain SGD.")


def create_optimizer(
    config: ml_collections.ConfigDict,
    schedule: optax.Schedule,
    params: Mapping,
    head_names: tuple[str, ...] = (),
) -> optax.GradientTransformation:
    """Gradient clipping -> optimizer with masked weight decay -> optional head LR multiplier."""
    opt = config.optimizer
    check_optimizer_config(opt)
    wd = float(opt.weight_decay)
    mask = None if opt.decay_norms_and_biases else decay_mask(params)
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=wd, mask=mask)
    elif opt.name in ("sgd", "adam"):
        # Coupled (L2) weight decay as in PyTorch's SGD / Adam, added to the gradient.
        base = (
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov)
            if opt.name == "sgd"
            else optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps)
        )
        decay = optax.add_decayed_weights(wd, mask) if wd else optax.identity()
        core = optax.chain(decay, base)
    else:
        raise OptimConfigError(
            f"Unknown optimizer {opt.name!r} (config key optimizer.name). "
            f"Choose one of: {', '.join(OPTIMIZERS)}."
        )
    parts = []
    if opt.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    parts.append(core)
    if opt.head_lr_multiplier != 1.0 and head_names:
        # Every update above is linear in the learning rate, so scaling the head's updates is
        # the same as giving the head its own learning rate.
        parts.append(
            optax.masked(optax.scale(float(opt.head_lr_multiplier)), head_mask(params, head_names))
        )
    return optax.chain(*parts)
