"""Handover from training to fusion: a workdir's best checkpoint, evaluated and written to disk.

    <workdir>/export/export.json
        {"format": 1, "model": "vit", "dataset": "rafdb/compound", "class_names": [...],
         "step": <best checkpoint step>,
         "splits": {"train_fit": "train_fit.npz", "validation": "validation.npz", ...},
         "metrics": {"validation": {"accuracy": .., "macro_f1": .., "num_examples": ..}, ...}}
    <workdir>/export/<split>.npz
        logits float32 [N, K], features float32 [N, D], labels int32 [N],
        file_names unicode str [N]; rows in the split's file order, every example exactly once.

The exported splits default to the config's dataset.train_split (evaluated without
augmentation, for feature-level fusion) followed by its dataset.eval_splits. The directory is
written to a temporary sibling and renamed into place, so readers never see half an export.

API: `export_workdir`, `load_export`, `export_is_current`, `restore_model`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from cer_jax import checkpointing, sharding, steps
from cer_jax.metrics import classification_metrics

EXPORT_DIR = "export"
EXPORT_FILE = "export.json"
FORMAT = 1
ARRAYS = ("logits", "features", "labels", "file_names")


class ExportError(ValueError):
    """A workdir whose export is missing or unreadable."""


def default_splits(config: ml_collections.ConfigDict) -> list[str]:
    splits = [config.dataset.train_split, *config.dataset.eval_splits]
    return list(dict.fromkeys(splits))


def restore_model(workdir: str) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The best checkpoint's model (call it with train=False) and the workdir's config."""
    return checkpointing.restore_best_model(workdir)


def export_workdir(workdir: str, splits: Sequence[str] | None = None) -> dict[str, str]:
    """Restores the best checkpoint, evaluates `splits` and writes `<workdir>/export/`."""
    from cer_jax.data import pipeline

    mesh = sharding.create_mesh()
    graphdef, step, state, config = checkpointing.restore_best(workdir, mesh)
    info = pipeline.get_dataset_info(config)
    eval_fn = steps.jit_eval_step(graphdef, mesh, num_classes=info.num_classes)
    manifest = write_export(workdir, config, info, eval_fn, state, step, mesh, splits)
    export_dir = os.path.join(workdir, EXPORT_DIR)
    return {split: os.path.join(export_dir, name) for split, name in manifest["splits"].items()}


def predict_split(
    eval_fn: Callable[..., dict[str, jax.Array]],
    state: Any,
    config: ml_collections.ConfigDict,
    info: Any,
    split: str,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """{"logits", "features", "loss", "label", "file_name"} over every example of `split`."""
    from cer_jax.data import pipeline

    batches = pipeline.eval_iterator(
        config, info, split, global_batch_size=config.eval.global_batch_size
    )
    return steps.run_eval(eval_fn, state, batches, mesh)


def write_export(
    workdir: str,
    config: ml_collections.ConfigDict,
    info: Any,
    eval_fn: Callable[..., dict[str, jax.Array]],
    state: Any,
    step: int,
    mesh: jax.sharding.Mesh,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluates `state` (the best checkpoint, at `step`) on each split, writes the export and
    returns its manifest (the export.json contents). Only process 0 writes files."""
    splits = list(splits) if splits is not None else default_splits(config)
    results = {split: predict_split(eval_fn, state, config, info, split, mesh) for split in splits}

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model": config.model.name,
        "dataset": config.dataset.name,
        "class_names": list(info.class_names),
        "step": int(step),
        "splits": {},
        "metrics": {},
    }
    arrays = {}
    for split, out in results.items():
        arrays[split] = {
            "logits": out["logits"].astype(np.float32),
            "features": out["features"].astype(np.float32),
            "labels": out["label"].astype(np.int32),
            "file_names": out["file_name"].astype(str),
        }
        scores = classification_metrics(
            arrays[split]["labels"], out["logits"].argmax(-1), info.num_classes, info.class_names
        )
        manifest["splits"][split] = f"{split}.npz"
        manifest["metrics"][split] = {
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
            "num_examples": scores["num_examples"],
        }
    if jax.process_index() != 0:
        return manifest
    export_dir = os.path.join(workdir, EXPORT_DIR)
    tmp_dir = export_dir + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    for split, split_arrays in arrays.items():
        np.savez(os.path.join(tmp_dir, f"{split}.npz"), **split_arrays)
    with open(os.path.join(tmp_dir, EXPORT_FILE), "w") as f:
        json.dump(manifest, f, indent=2)
    old_dir = export_dir + f".old-{os.getpid()}"
    if os.path.exists(export_dir):
        os.rename(export_dir, old_dir)
    os.rename(tmp_dir, export_dir)
    shutil.rmtree(old_dir, ignore_errors=True)
    return manifest


def load_export(workdir: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(export.json contents, {split: {"logits", "features", "labels", "file_names"}})."""
    export_dir = os.path.join(workdir, EXPORT_DIR)
    manifest_path = os.path.join(export_dir, EXPORT_FILE)
    if not os.path.exists(manifest_path):
        raise ExportError(
            f"{manifest_path} not found: {workdir!r} has no export. Finish its training run, or "
            f"write one with `cer_jax.export.export_workdir({workdir!r})`."
        )
    with open(manifest_path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ExportError(
            f"{manifest_path} has format {manifest.get('format')!r}, expected {FORMAT}: "
            "re-export it with this version (cer_jax.export.export_workdir)."
        )
    arrays = {}
    for split, name in manifest["splits"].items():
        path = os.path.join(export_dir, name)
        if not os.path.exists(path):
            raise ExportError(f"{path} (split {split!r} of {manifest_path}) is missing: re-export.")
        with np.load(path) as data:
            missing = [key for key in ARRAYS if key not in data]
            if missing:
                raise ExportError(f"{path} lacks arrays {missing}: re-export.")
            arrays[split] = {key: data[key] for key in ARRAYS}
    return manifest, arrays


def export_is_current(workdir: str) -> bool:
    """True when the export exists and was made from the workdir's current best checkpoint."""
    manifest_path = os.path.join(workdir, EXPORT_DIR, EXPORT_FILE)
    if not os.path.exists(manifest_path):
        return False
    with open(manifest_path) as f:
        manifest = json.load(f)
    try:
        return manifest.get("step") == checkpointing.best_step(workdir)
    except checkpointing.WorkdirError:
        return False
