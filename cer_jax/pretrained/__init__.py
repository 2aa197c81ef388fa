"""Pre-trained weight import: `load_pretrained(model, model_name, path)`.

Each model family has a converter module exposing
    convert(checkpoint: dict[str, np.ndarray], model) -> Converted
that renames / re-lays-out a checkpoint's tensors into the model's state paths; `core.assign`
then checks and writes them. Converters are imported lazily (only MA-Net's `.pth.tar` needs
PyTorch, and only to unpickle).
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import numpy as np
from flax import nnx

from cer_jax.pretrained.core import ImportReport, WeightImportError, assign
from cer_jax.pretrained.readers import CheckpointReadError, read_checkpoint

__all__ = [
    "CheckpointReadError",
    "Converted",
    "ImportReport",
    "WeightImportError",
    "load_pretrained",
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


def load_pretrained(
    model: nnx.Module, model_name: str, path: str | os.PathLike[str], *, keep_head: bool = False
) -> ImportReport:
    """Loads the checkpoint at `path` into `model` (in place) and reports what happened."""
    if model_name not in _CONVERTERS:
        raise ValueError(
            f"No weight import for model {model_name!r} (config key model.name); "
            f"known: {', '.join(sorted(_CONVERTERS))}."
        )
    checkpoint = read_checkpoint(path)
    converted: Converted = importlib.import_module(_CONVERTERS[model_name]).convert(
        checkpoint, model
    )
    return assign(
        model,
        converted.arrays,
        source=os.fspath(path),
        head_names=type(model).HEAD_NAMES,
        keep_head=keep_head,
        unused=converted.unused,
        resized=converted.resized,
    )
