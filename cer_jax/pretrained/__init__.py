"""Pre-trained weight import: `load_pretrained(model, model_name, path)`.

Each model family has a converter module exposing
    convert(checkpoint: dict[str, np.ndarray], model) -> Converted
that renames / re-lays-out a checkpoint's tensors into the model's state paths; `core.assign`
then checks and writes them. Converters are imported lazily (only MA-Net's `.pth.tar` needs
PyTorch, and only to unpickle).

`implied_settings(model_name, path)` says which model config values the file's format implies
(ViT GELU form and LayerNorm epsilon, MA-Net path B order; see `implied.py`), cheaply, before the
model is built; `load_pretrained` warns when a model it loads into disagrees with them.
`check_pretrained` does everything `load_pretrained` does but write, on an abstract model, so the
trainer finds a file that does not fit before the data work; `input_statistics` says which input
mean/std the file's network was pre-trained with, where the format or a file beside it says so.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os

import numpy as np
from etils import epath
from flax import nnx

from cer_jax.errors import UserError
from cer_jax.pretrained.core import ImportReport, WeightImportError, assign
from cer_jax.pretrained.implied import (
    MANET_CODE_VERSIONS,
    Setting,
    head_class_names,
    input_statistics,
    manet_path_b_order,
    model_settings,
    naming_the_file,
    settings_for_keys,
)
from cer_jax.pretrained.readers import CheckpointReadError, checkpoint_keys, read_checkpoint

__all__ = [
    "MANET_CODE_VERSIONS",
    "CheckpointReadError",
    "Converted",
    "ImportReport",
    "Setting",
    "WeightImportError",
    "check_pretrained",
    "head_class_names",
    "implied_settings",
    "input_statistics",
    "load_pretrained",
    "manet_path_b_order",
    "model_settings",
]


@dataclasses.dataclass
class Converted:
    """A converter's result: arrays by model state path, plus what it dropped or resized."""

    arrays: dict[str, np.ndarray]
    unused: list[str] = dataclasses.field(default_factory=list)
    resized: list[str] = dataclasses.field(default_factory=list)


_CONVERTERS = {
    "vit": "cer_jax.pretrained.vit",
    "resnet": "cer_jax.pretrained.resnet",
    "manet": "cer_jax.pretrained.manet",
}


def _check_model_name(model_name: str) -> None:
    if model_name not in _CONVERTERS:
        raise UserError(
            f"No weight import for model {model_name!r} (config key model.name); "
            f"known: {', '.join(sorted(_CONVERTERS))}."
        )


def implied_settings(
    model_name: str,
    path: str | os.PathLike[str] | epath.Path,
    *,
    manet_code_version: str = "2021",
    keep_weights: bool = False,
) -> dict[str, Setting]:
    """Model config keys (e.g. 'gelu_approximate') and the values the file at `path` (local or
    remote, e.g. gs://; read through etils epath) implies.

    Reads tensor names only where the format allows (`.npz`, safetensors; a PyTorch pickle is
    loaded, and with `keep_weights` kept for the `check_pretrained` / `load_pretrained` that
    follow) plus a Hugging Face `config.json` beside the weights. An unknown or unreadable file
    raises the error `load_pretrained` would give; an unknown `manet_code_version` a ValueError
    naming `init.manet_code_version`. ResNet files imply nothing ({}).
    """
    _check_model_name(model_name)
    if model_name == "manet":
        manet_path_b_order(manet_code_version)  # a bad version fails before the file is read
    return settings_for_keys(model_name, checkpoint_keys(path, keep=keep_weights), path,
                             manet_code_version=manet_code_version)


def load_model_arrays(
    model: nnx.Module,
    model_name: str,
    arrays: dict[str, np.ndarray],
    *,
    source: str,
    keep_head: bool = False,
) -> ImportReport:
    """Loads another cer_jax model's arrays (a run's best checkpoint, `init.workdir`) into
    `model` (in place), fitted to it as a pre-trained file's are: a ViT's class token and
    position embedding follow its pooling and patch grid (another input.image_size)."""
    _check_model_name(model_name)
    unused: list[str] = []
    resized: list[str] = []
    if model_name == "vit":
        from cer_jax.pretrained import vit

        unused, resized = vit.fit_tokens(arrays, model)
    return assign(model, arrays, source=source, head_names=type(model).HEAD_NAMES,
                  keep_head=keep_head, unused=unused, resized=resized)


def load_pretrained(
    model: nnx.Module,
    model_name: str,
    path: str | os.PathLike[str] | epath.Path,
    *,
    keep_head: bool = False,
) -> ImportReport:
    """Loads the checkpoint at `path` (local or remote, e.g. gs://; read through etils epath) into
    `model` (in place) and reports what happened.

    A ViT whose GELU form or LayerNorm epsilon differs from what the file implies is loaded, with
    a warning (it computes another function than the one the weights were trained in).
    """
    return _import(model, model_name, path, keep_head=keep_head, write=True)


def check_pretrained(
    model: nnx.Module, model_name: str, path: str | os.PathLike[str] | epath.Path
) -> ImportReport:
    """What `load_pretrained` would do, its errors included, writing nothing: `model` may be
    abstract (`nnx.eval_shape`), so a file that does not fit is found before any data is read.
    The arrays read stay in memory for the `load_pretrained` of the same file that follows."""
    return _import(model, model_name, path, keep_head=False, write=False)


def _import(
    model: nnx.Module,
    model_name: str,
    path: str | os.PathLike[str] | epath.Path,
    *,
    keep_head: bool,
    write: bool,
) -> ImportReport:
    _check_model_name(model_name)
    checkpoint = read_checkpoint(path, keep=not write)  # a check is followed by the load
    with naming_the_file(path):
        converted: Converted = importlib.import_module(_CONVERTERS[model_name]).convert(
            checkpoint, model
        )
    report = assign(
        model,
        converted.arrays,
        source=os.fspath(path),
        head_names=type(model).HEAD_NAMES,
        keep_head=keep_head,
        unused=converted.unused,
        resized=converted.resized,
        write=write,
    )
    if model_name == "vit" and write:
        implied = settings_for_keys(model_name, checkpoint, path)
        actual = model_settings(model, model_name)
        for key, setting in implied.items():
            if actual[key] != setting.value:
                logging.getLogger(__name__).warning(
                    "%s implies model.%s=%r (%s), but the model was built with %r: it does not "
                    "compute the network these weights were trained in. Set "
                    "--config.model.%s=%r (or leave it unset to apply the file's value).",
                    os.fspath(path), key, setting.value, setting.reason, actual[key], key,
                    setting.value,
                )
    return report
