"""The on-disk handover from training to fusion: a best checkpoint's outputs per split.

    <workdir>/export/export.json
        {"format": 2, "member": "vit", "model": "vit", "dataset": "rafdb/compound",
         "train_split": "train_fit", "class_names": [...], "step": <best checkpoint step>,
         "seed": <model init seed>, "data_seed": <data order seed>,
         "splits": {"train_fit": "train_fit.npz", "validation": "validation.npz", ...},
         "metrics": {"validation": {"accuracy": .., "macro_f1": .., "num_examples": ..}, ...}}
    <workdir>/export/<split>.npz
        logits float32 [N, K], features float32 [N, D], labels int32 [N],
        file_names unicode str [N]; every example of the split exactly once.

The exported splits default to the config's dataset.train_split (evaluated without
augmentation, for feature-level fusion) followed by its dataset.eval_splits. The directory is
written to a temporary sibling and renamed into place, export.json last (on gs:// a folder
moves object by object): a folder without export.json is no export, and one with it is whole.
Every path goes through etils epath (gs:// workdirs work); only process 0 writes, and every
process returns from `write_export` only once the new export is in place.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from cer_jax import checkpointing, evaluate, paths, sharding, steps
from cer_jax.checkpointing import EXPORT_DIR, EXPORT_FILE
from cer_jax.data import pipeline, sources
from cer_jax.errors import UserError

FORMAT = 2
ARRAYS = ("logits", "features", "labels", "file_names")


class ExportError(UserError):
    """A workdir whose export is missing or unreadable."""


def export_dir(workdir: str) -> epath.Path:
    return checkpointing.workdir_path(workdir, EXPORT_DIR)


def default_splits(config: ml_collections.ConfigDict) -> list[str]:
    """The splits a run exports: its export.splits, else its train and eval splits (a
    re-export before a fusion writes what the finished run wrote)."""
    if config.get("export", {}).get("splits"):
        return list(config.export.splits)
    splits = [config.dataset.train_split, *config.dataset.eval_splits]
    return list(dict.fromkeys(splits))


def export_workdir(workdir: str, splits: Sequence[str] | None = None) -> dict[str, Any]:
    """Restores the best checkpoint's model state, evaluates `splits` (default: the run's
    `default_splits`) and writes `<workdir>/export/`; returns the manifest."""
    mesh = sharding.create_mesh()
    graphdef, step, state, config = checkpointing.restore_best_state(workdir, mesh)
    # Trained on other devices (8 GPUs, fused on 3 or 6): the recorded evaluation batch is
    # rounded up to split over these; evaluation pads and masks, so the rows are the same.
    devices = jax.device_count()
    config.eval.global_batch_size = -(-config.eval.global_batch_size // devices) * devices
    try:
        info = pipeline.get_dataset_info(config)
    except sources.DataConfigError as error:
        # Fusion on another machine than the training's: the data lie elsewhere, and the key
        # the message names is one of the member's config.json, not of fusion's config.
        config_path = checkpointing.workdir_path(workdir, checkpointing.CONFIG_FILE)
        raise ExportError(
            f"Exporting the best checkpoint of {workdir} reads its dataset as its training "
            f"config says, which failed: {str(error).rstrip('.')}. That key is in {config_path}: "
            "set it there (e.g. to where the data lie on this machine).") from error
    trained = list(config.get("dataset_info", {}).get("class_names") or info.class_names)
    if list(info.class_names) != trained:
        # The model's outputs are the trained classes, in their order: named after other ones,
        # every label and figure of the export (and of a fusion) would be wrong without a word.
        config_path = checkpointing.workdir_path(workdir, checkpointing.CONFIG_FILE)
        raise ExportError(
            f"The best checkpoint of {workdir} was trained on the classes {trained}, but its "
            f"dataset as {config_path} says now has {list(info.class_names)}: its outputs would "
            "be named after the wrong classes. Point that file's dataset keys at the data it "
            "was trained on.")
    eval_fn = steps.jit_eval_step(graphdef, mesh, num_classes=info.num_classes)
    return write_export(workdir, config, info, eval_fn, state, step, mesh, splits)


def write_export(
    workdir: str,
    config: ml_collections.ConfigDict,
    info: Any,
    eval_fn: evaluate.EvalFn,
    state: Any,
    step: int,
    mesh: jax.sharding.Mesh,
    splits: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluates `state` (the best checkpoint's model state, at `step`) on each split, writes
    the export and returns its manifest (the export.json contents)."""
    splits = list(splits) if splits is not None else default_splits(config)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "member": config.get("member") or config.model.name,
        "model": config.model.name,
        "dataset": config.dataset.name,
        "train_split": config.dataset.train_split,
        "class_names": list(info.class_names),
        "step": int(step),
        # What a paper table needs to retrain this member: the seeds of its initialisation and
        # of its data order.
        "seed": config.get("seed"),
        "data_seed": checkpointing.data_order_seed(config),
        "splits": {},
        "metrics": {},
    }
    arrays = {}
    for split in splits:
        out = evaluate.predict_split(eval_fn, state, config, info, split, mesh)
        arrays[split] = {
            "logits": out["logits"].astype(np.float32),
            "features": out["features"].astype(np.float32),
            "labels": out["label"].astype(np.int32),
            "file_names": out["file_name"].astype(str),
        }
        metrics = evaluate.scores(out, info)
        manifest["splits"][split] = f"{split}.npz"
        manifest["metrics"][split] = {
            key: metrics[key] for key in ("accuracy", "macro_f1", "num_examples")
        }
    error = None
    if jax.process_index() == 0:
        try:
            _write_atomically(export_dir(workdir), manifest, arrays)
        except Exception as e:  # raised below, once the others know
            error = e
    # A barrier: the other processes read this export next (fusion), so they wait until it is
    # whole, and learn whether process 0 failed to write it rather than wait for it forever.
    if sharding.any_process(error is not None):
        if error is not None:
            raise error
        raise ExportError(f"Process 0 could not write {export_dir(workdir)}: see its log.")
    return manifest


def _write_atomically(target: epath.Path, manifest: dict, arrays: dict) -> None:
    with paths.replacing_folder(target, manifest=EXPORT_FILE) as tmp:
        for split, split_arrays in arrays.items():
            buffer = io.BytesIO()
            np.savez(buffer, **split_arrays)
            (tmp / f"{split}.npz").write_bytes(buffer.getvalue())
        (tmp / EXPORT_FILE).write_text(json.dumps(manifest, indent=2))


_REEXPORT = ("copy the export again, or re-export it from the best checkpoint "
             "(python -m cer_jax.fuse --config.reexport=True, or "
             "cer_jax.export.export_workdir({workdir!r})).")


def read_manifest(workdir: str) -> dict[str, Any] | None:
    """export.json's contents, or None when the workdir has no export."""
    path = export_dir(workdir) / EXPORT_FILE
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:  # cut short (an interrupted copy) or edited by hand
        raise ExportError(f"{path} is not valid JSON ({e}): {_REEXPORT.format(workdir=workdir)}"
                          ) from e
    if not isinstance(manifest, dict):
        raise ExportError(f"{path} is not an export manifest (a JSON object): "
                          f"{_REEXPORT.format(workdir=workdir)}")
    return manifest


def load_export(workdir: str) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(export.json contents, {split: {"logits", "features", "labels", "file_names"}})."""
    directory = export_dir(workdir)
    manifest = read_manifest(workdir)
    if manifest is None:
        raise ExportError(
            f"{directory / EXPORT_FILE} not found: {workdir!r} has no export. Finish its training "
            f"run, or write one with `cer_jax.export.export_workdir({workdir!r})`."
        )
    if manifest.get("format") != FORMAT:
        raise ExportError(
            f"{directory / EXPORT_FILE} has format {manifest.get('format')!r}, expected {FORMAT}: "
            "re-export it with this version (cer_jax.export.export_workdir)."
        )
    arrays = {}
    for split, name in manifest["splits"].items():
        path = directory / name
        if not path.exists():
            raise ExportError(f"{path} (split {split!r} of the export) is missing: "
                              f"{_REEXPORT.format(workdir=workdir)}")
        try:
            with np.load(io.BytesIO(path.read_bytes())) as data:
                arrays[split] = {key: data[key] for key in ARRAYS if key in data}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # cut short (an interrupted copy) or not an .npz
            raise ExportError(f"{path} (split {split!r} of the export) cannot be read ({e}): "
                              f"{_REEXPORT.format(workdir=workdir)}") from e
        missing = [key for key in ARRAYS if key not in arrays[split]]
        if missing:
            raise ExportError(f"{path} (split {split!r} of the export) lacks arrays {missing}: "
                              f"{_REEXPORT.format(workdir=workdir)}")
        problem = _inconsistency(arrays[split], len(manifest.get("class_names") or ()))
        if problem:  # fusion matches rows by file name: it would index past an array's end
            raise ExportError(f"{path} (split {split!r} of the export) {problem}: "
                              f"{_REEXPORT.format(workdir=workdir)}")
    return manifest, arrays


def _inconsistency(arrays: dict[str, np.ndarray], num_classes: int) -> str | None:
    """What is wrong with one split's arrays (rows that disagree in number, a label outside the
    class names), or None: such an export was not written by `write_export`."""
    rows = {key: np.shape(arrays[key])[0] if np.ndim(arrays[key]) else 0 for key in ARRAYS}
    if len(set(rows.values())) > 1 or not np.ndim(arrays["logits"]) == np.ndim(
            arrays["features"]) == 2:
        shapes = ", ".join(f"{key} {np.shape(arrays[key])}" for key in ARRAYS)
        return f"has arrays of different lengths or ranks ({shapes})"
    labels = np.asarray(arrays["labels"])
    outside = labels[(labels < 0) | (labels >= num_classes)]
    if num_classes and outside.size:  # no class names: the manifest's own error comes later
        return (f"has {outside.size} label(s) outside 0..{num_classes - 1} (export.json lists "
                f"{num_classes} class names), e.g. {int(outside[0])}")
    return None


def export_is_current(workdir: str) -> bool:
    """True when the export exists in this format and was made from the current best step."""
    try:
        manifest = read_manifest(workdir)
    except ExportError:  # unreadable: the best checkpoint writes it anew
        return False
    if manifest is None or manifest.get("format") != FORMAT:
        return False
    try:
        return manifest.get("step") == checkpointing.best_step(workdir)
    except checkpointing.WorkdirError:
        return False
