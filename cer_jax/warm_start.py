"""What a run starts from: the model settings a pre-trained file implies, and its weights.

Some model settings change the function a network computes without changing any parameter's
shape (ViT's GELU form and LayerNorm epsilon, MA-Net's path-B order), so loading weights cannot
detect a wrong one. A config leaves them at None / "auto"; `resolve_model_settings` then takes
what `init.checkpoint`'s format implies (or `init.workdir`'s model), else the model's default,
and logs it. A config that sets one differently from what the weights imply stops the run
before anything is read, naming the key, both values and the fix.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from cer_jax import checkpointing, models, pretrained, train_state
from cer_jax.data import augment
from cer_jax.errors import UserError

# Model config keys that change the computed function but no parameter shape.
FUNCTION_SETTINGS = ("gelu_approximate", "layer_norm_eps", "path_b_order")
AUTO = (None, "auto")


class ModelSettingError(UserError):
    """A model setting that contradicts the pre-trained weights."""


def _implied(config: ml_collections.ConfigDict, keep_weights: bool = False
             ) -> tuple[dict[str, Any], dict[str, str]]:
    """{key: value} the init source implies and {key: why}. `keep_weights`: the file's
    check and load follow (a fresh start), so a PyTorch pickle read whole here is kept."""
    init = config.init
    if config.model.name == "manet":  # a misspelt version fails with or without weights
        pretrained.manet_path_b_order(init.manet_code_version)
    if init.get("checkpoint"):
        settings = pretrained.implied_settings(
            config.model.name, init.checkpoint, manet_code_version=init.manet_code_version,
            keep_weights=keep_weights)
        return (
            {key: s.value for key, s in settings.items()},
            {key: f"init.checkpoint={init.checkpoint} implies it: {s.reason}"
             for key, s in settings.items()},
        )
    if init.get("workdir"):
        source_config = checkpointing.load_config(init.workdir)
        source = source_config.model
        _check_same_architecture(source, config.model, init.workdir)
        _check_same_input_scale(source_config.get("input", {}), config.input, init.workdir)
        values = {key: source[key] for key in FUNCTION_SETTINGS if source.get(key) not in AUTO}
        why = f"the model of init.workdir={init.workdir} was trained with it"
        return values, dict.fromkeys(values, why)
    return {}, {}


# Model config keys that set parameter shapes, besides the model's name (a ViT's image size
# only sets its position embedding's, which is resampled as for a pre-trained file).
_SIZE_KEYS = ("variant", "depth", "width", "pool", "representation_size")


def _check_same_architecture(
    source: ml_collections.ConfigDict, model: ml_collections.ConfigDict, workdir: str
) -> None:
    """init.workdir's network must be this config's: one line, not a list of every tensor."""
    if source.name != model.name:
        raise ModelSettingError(
            f"init.workdir={workdir} holds a {source.name} model and this config builds "
            f"{model.name}: start from a {model.name} run, or give pre-trained weights as "
            "init.checkpoint."
        )
    differing = [key for key in _SIZE_KEYS if source.get(key) != model.get(key)]
    if differing:
        raise ModelSettingError(
            f"init.workdir={workdir} holds a {source.name} of another size ("
            + "; ".join(f"model.{k}={source.get(k)!r} there, {model.get(k)!r} here"
                        for k in differing)
            + "): set " + " ".join(f"--config.model.{k}={source.get(k)}" for k in differing)
            + ", or start from a run of this size."
        )


def _check_same_input_scale(source_input: Any, wanted_input: ml_collections.ConfigDict,
                            workdir: str) -> None:
    """Fine-tuning init.workdir's network on inputs scaled otherwise than it learnt them (ImageNet
    mean/std after [-1, 1], say) silently starts it off its features: refused, with the fix."""
    there, here = source_input.get("normalization"), wanted_input.normalization
    if there is not None and there != here:
        raise ModelSettingError(
            f"init.workdir={workdir} was trained on inputs with input.normalization={there!r} "
            f"and this config feeds it {here!r}: set --config.input.normalization={there}, or "
            "start from a run trained with this normalisation."
        )


def resolve_model_settings(config: ml_collections.ConfigDict,
                           recorded: ml_collections.ConfigDict | None = None, *,
                           keep_weights: bool = False) -> None:
    """Replaces every None / "auto" function setting of config.model by a concrete value, in
    place (so config.json records what was built); refuses contradictions. `recorded`: the
    model section of a resumed run's config.json, whose values are taken instead of reading
    the init source again (which may be gone: its weights load only at step 0).
    `keep_weights`: init.checkpoint is checked and loaded next (a fresh start): a PyTorch pickle,
    read whole for its names, stays in memory for them rather than being read twice more."""
    if recorded is not None:
        values = {key: recorded[key] for key in FUNCTION_SETTINGS
                  if recorded.get(key) not in AUTO}
        why = dict.fromkeys(values, "the config.json of the resumed run records it")
    else:
        values, why = _implied(config, keep_weights)
    defaults = models.default_options(config.model.name)
    for key, value in values.items():
        if key not in defaults:
            continue
        current = config.model.get(key)
        if current in AUTO:
            logging.info("model.%s=%r (%s).", key, value, why[key])
            config.model[key] = value
        elif current != value:
            raise ModelSettingError(
                f"model.{key}={current!r} contradicts the pre-trained weights, which need "
                f"{value!r} ({why[key]}). Leave model.{key} unset (auto) or pass "
                f"--config.model.{key}={value}."
            )
    for key in FUNCTION_SETTINGS:
        if key in config.model and config.model[key] in AUTO:
            config.model[key] = defaults[key]


def check_kept_head(config: ml_collections.ConfigDict, class_names: list[str]) -> None:
    """init.keep_head with init.workdir keeps that run's head only for the same classes in the
    same order: a head of other classes (basic-7 vs the 7 C-EXPR-DB classes have one shape) or
    of another order would start off predicting wrong names, which no shape check sees."""
    init = config.init
    if init.get("keep_head") and init.get("checkpoint"):
        _check_kept_checkpoint_head(init.checkpoint, class_names)
    if not (init.get("keep_head") and init.get("workdir")):
        return
    source = checkpointing.load_config(init.workdir).get("dataset_info", {}).get("class_names")
    if source is not None and list(source) != list(class_names):
        order = " (the same classes in another order)" if sorted(source) == sorted(
            class_names) else ""
        raise ModelSettingError(
            f"init.keep_head=True keeps the head of init.workdir={init.workdir}, trained on "
            f"classes {list(source)}, but this dataset's are {list(class_names)}{order}: set "
            "--config.init.keep_head=False to learn a new head, or start from a run on these "
            "classes."
        )


def _check_kept_checkpoint_head(checkpoint: str, class_names: list[str]) -> None:
    """init.keep_head with a pre-trained file whose config.json names its head's classes (a FER
    model from the Hub): other names, or another order, start the kept head off predicting
    other classes. A warning, not an error: datasets spell the same classes otherwise (angry /
    Anger), and only the user knows whether they are the same in the same order."""
    source = pretrained.head_class_names(checkpoint)
    if source is None or len(source) != len(class_names):  # another count: the head is new
        return
    there, here = [name.lower() for name in source], [name.lower() for name in class_names]
    if there == here:
        return
    why = ("the same names in another order" if sorted(there) == sorted(here) else
           "unless these are the same classes in the same order under other names")
    logging.warning(
        "init.keep_head=True keeps the head of init.checkpoint=%s, whose config.json names its "
        "classes %s, and this dataset's are %s: %s, the kept head starts off predicting other "
        "classes; set --config.init.keep_head=False to learn a new head.",
        checkpoint, source, list(class_names), why)


def check_source_run_finished(config: ml_collections.ConfigDict) -> None:
    """Warns when init.workdir's run stopped before its last step (halted, preempted, or still
    training): the fine-tuning starts from its best checkpoint so far, which a `;` after a
    preempted basic run (exit status 143) gave without a word. Only a warning: it may be meant."""
    source = config.init.get("workdir")
    stopped = checkpointing.stopped_early(source) if source else None
    if stopped is not None:
        logging.warning(
            "init.workdir=%s stopped %s (halted or preempted, or still training): this run "
            "starts from its best checkpoint so far, not its finished run's; run "
            "python -m cer_jax.train on %s again to finish it first, unless that is meant.",
            source, stopped, source)


def check_input_normalization(config: ml_collections.ConfigDict) -> None:
    """Warns when init.checkpoint's network was pre-trained on inputs scaled otherwise than
    config.input.normalization scales them (DeiT's ImageNet mean/std fed [-1, 1], say): it
    starts off its features, which no shape check sees. Only a warning: the follow-up recipe
    feeds AugReg ViTs ImageNet mean/std on purpose, as its paper states."""
    checkpoint = config.init.get("checkpoint")
    if not checkpoint:
        return
    setting = pretrained.input_statistics(config.model.name, checkpoint)
    if setting is None:
        return
    mean, std = (np.asarray(v, np.float64) for v in setting.value)
    names = [name for name, (m, s) in augment.NORMALIZATION_STATS.items()
             if np.allclose(mean, m, atol=2e-3) and np.allclose(std, s, atol=2e-3)]
    here = config.input.normalization
    if here in names:
        return
    fix = (f"set --config.input.normalization={names[0]}" if names else
           "no input.normalization computes it")
    logging.warning(
        "init.checkpoint=%s was pre-trained on inputs normalised with mean %s and std %s (%s), "
        "and this config feeds it input.normalization=%r, mean %s and std %s: the network "
        "starts off the features it learnt; %s unless that is meant.",
        checkpoint, tuple(mean.round(4).tolist()), tuple(std.round(4).tolist()), setting.reason,
        here, *(tuple(v) for v in augment.NORMALIZATION_STATS[here]), fix)


def check_initial_weights(config: ml_collections.ConfigDict) -> None:
    """Reads init.checkpoint and checks it against the model this config builds, abstractly
    (nothing computed or written): a file that does not fit (another variant, another network)
    stops the run in one line before the data is prepared and decoded, which may take minutes,
    not after. The head is not checked: its class count comes from the data."""
    if not config.init.get("checkpoint"):
        return
    model = nnx.eval_shape(lambda: train_state.create_model(config, num_classes=2, seed=0))
    pretrained.check_pretrained(model, config.model.name, config.init.checkpoint)


def load_initial_weights(model: nnx.Module, config: ml_collections.ConfigDict) -> None:
    """Loads config.init.checkpoint (a pre-trained file) or config.init.workdir (a cer_jax run's
    best checkpoint), in place; the classification head(s) stay freshly initialised."""
    init = config.init
    keep_head = bool(init.get("keep_head"))
    if init.get("checkpoint"):
        report = pretrained.load_pretrained(
            model, config.model.name, init.checkpoint, keep_head=keep_head
        )
    elif init.get("workdir"):
        source, _ = checkpointing.restore_best_model(init.workdir)
        arrays = {
            name: jax.device_get(var.get_value())
            for name, var in pretrained.core.model_arrays(source).items()
        }
        report = pretrained.load_model_arrays(
            model, config.model.name, arrays, source=f"{init.workdir} (best checkpoint)",
            keep_head=keep_head)
    else:
        return
    logging.info("%s", report.summary())
