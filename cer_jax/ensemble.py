"""The ensemble artefact: every member's model, preprocessing, the fitted fusion, class names.

A self-contained directory that `python -m cer_jax.predict --ensemble=DIR` loads with no
training workdir, no TFDS and no TensorFlow (only JAX / Flax, numpy and OpenCV):

    DIR/ensemble.json          {"format": 1, "kind": "cer_jax.ensemble", "class_names": [...],
                                "dataset": "rafdb/compound_abaw7", "aligned_size": 100,
                                "strategy": {"name", "params", "state_file": "strategy.npz"},
                                "members": [{"name", "model", "dir",
                                             "preprocessing": {image_size, normalization,
                                                               eval_resize, resize_size (the
                                                               crop view only; artefacts before
                                                               2026-12-02 always carry it)}}],
                                "workdirs": [...], "steps": [...] (written by fuse: each
                                member's workdir and best step; steps since 2026-12-07)}
    DIR/strategy.npz           the fitted fusion's numbers (`Fitted.state`); scalars and strings
                               as 0-d arrays
    DIR/members/<i>_<name>/config.json   the member's resolved training config (config.model
                               rebuilds the network, config.dataset_info its label space)
    DIR/members/<i>_<name>/model.npz     the model state: one array per leaf of
                               {"params": ..., "rest": ...} (`nnx.split(model, nnx.Param, ...)`),
                               keyed by its path joined with "/", e.g. "params/head/kernel";
                               bfloat16 leaves are stored as float32, RNG keys are not stored
                               (evaluation never draws from them)

The directory is written under a temporary sibling and renamed into place, ensemble.json last
(on gs:// a folder moves object by object): a folder without it is refused, and so is one whose
fusion or member configs do not fit its ensemble.json (a member taken out of it by hand). Every
path goes through etils epath, so DIR may be remote (gs://...).

Preprocessing is the training pipeline's eval view (`cer_jax.data.augment.eval_view`) in
numpy: TF's antialiased bilinear resize (`tf.image.resize(..., antialias=True)`, i.e.
`scale_and_translate` with a triangle kernel) as two separable weight matrices, the optional
resize-shorter + central crop, then the member's normalisation; it matches TF to ~1e-6.

API: `write_ensemble`, `write_from_fusion` (called at the end of `cer_jax.fusion.evaluator.fuse`),
`load_ensemble` -> `Ensemble.predict(faces)`, `eval_view`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from cer_jax import checkpointing, models, paths, sharding, train_state
from cer_jax.errors import UserError
from cer_jax.fusion import strategies
from tfds_rafdb import layout

FORMAT = 1
KIND = "cer_jax.ensemble"
ENSEMBLE_FILE = "ensemble.json"
STRATEGY_FILE = "strategy.npz"
MODEL_FILE = "model.npz"
CONFIG_FILE = "config.json"
ALIGNED_SIZE = layout.IMAGE_SIZE  # RAF-DB's aligned faces: what the members were trained on.



class EnsembleError(ValueError):
    """An ensemble directory that is missing, incomplete or of another format."""


class EnsembleWriteError(UserError):
    """The ensemble directory could not be written (disk full, no permission)."""


# --- preprocessing: the eval view in numpy ---------------------------------------------------


@functools.lru_cache(maxsize=64)
def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of TF's antialiased triangle-kernel resize along one axis.

    A port of `ComputeSpansCore` (tensorflow/core/kernels/image/scale_and_translate_op.cc)
    with scale = out / in and no translation, float32 like TF.
    """
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0) / scale
    kernel_scale = max(inv_scale, np.float32(1.0))  # antialias: widen the kernel when shrinking
    weights = np.zeros((out_size, in_size), np.float32)
    for x in range(out_size):
        sample = np.float32((x + 0.5) * inv_scale)
        if sample < 0 or sample > in_size:
            continue
        start = math.ceil(sample - kernel_scale - 0.5)
        end = math.floor(sample + kernel_scale - 0.5)
        start, end = min(max(start, 0), in_size - 1), min(max(end, 0), in_size - 1) + 1
        source = np.arange(start, end, dtype=np.float32)
        w = np.maximum(
            np.float32(0), np.float32(1) - np.abs((source + 0.5 - sample) / kernel_scale)
        ).astype(np.float32)
        total = w.sum(dtype=np.float32)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            w = w / total
        weights[x, start:end] = w
    return weights


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [H, W, C] in [0, 1] -> [height, width, C], as `augment.resize` (clipped)."""
    rows = _resize_weights(image.shape[0], height)
    cols = _resize_weights(image.shape[1], width)
    out = np.einsum("oh,hwc->owc", rows, image.astype(np.float32), optimize=True)
    out = np.einsum("pw,owc->opc", cols, out, optimize=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """As `augment.normalize` (whose constants these are), in numpy."""
    # Here, not at the top: importing the ensemble (cer_jax.predict) loads no input pipeline.
    from cer_jax.data import augment

    if mode == "imagenet":
        return (image - np.float32(augment.IMAGENET_MEAN)) / np.float32(augment.IMAGENET_STD)
    if mode == "minus_one_one":
        return image * np.float32(2.0) - np.float32(1.0)
    if mode == "unit":
        return image
    raise EnsembleError(
        f"Unknown normalization {mode!r}; choose one of {augment.NORMALIZATIONS}.")


def eval_view(image: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> normalised float32 [S, S, 3]: `augment.eval_view` in numpy."""
    size = int(preprocessing["image_size"])
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    if preprocessing.get("eval_resize", "resize") == "resize":
        x = resize(x, size, size)
    else:
        h, w = x.shape[:2]
        shorter = np.float32(int(preprocessing["resize_size"])) / np.float32(min(h, w))
        new_h = max(int(np.round(np.float32(h) * shorter)), int(preprocessing["resize_size"]))
        new_w = max(int(np.round(np.float32(w) * shorter)), int(preprocessing["resize_size"]))
        x = resize(x, new_h, new_w)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[top : top + size, left : left + size]
    return normalize(x, str(preprocessing.get("normalization", "unit"))).astype(np.float32)


# --- model state as path-keyed arrays --------------------------------------------------------


def _key_name(path: Sequence[Any]) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key)


def _flat_state(params: dict, rest: dict) -> dict[str, np.ndarray]:
    flat = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path({"params": params, "rest": rest})
    for path, leaf in leaves:
        if _is_key(leaf):
            continue
        array = np.asarray(jax.device_get(leaf))
        if array.dtype == jnp.bfloat16:
            array = array.astype(np.float32)
        flat[_key_name(path)] = array
    return flat


def _write_npz(path: epath.Path, arrays: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    path.write_bytes(buffer.getvalue())


def _damaged(path: epath.Path, what: str) -> EnsembleError:
    """A file of the ensemble that is there but unreadable (truncated by a copy, edited): only
    writing the ensemble again mends it."""
    return EnsembleError(f"{path} is damaged ({what}): write the ensemble again with python -m "
                         "cer_jax.fuse (its --out=OUT writes OUT/ensemble).")


def _mismatched(path: epath.Path, what: str) -> EnsembleError:
    """A file of the ensemble that does not fit ensemble.json (a member taken out of it by hand,
    a file copied in from another ensemble)."""
    return EnsembleError(f"{path} does not fit {ENSEMBLE_FILE} ({what}): write the ensemble "
                         "again with python -m cer_jax.fuse, with the members you want (its "
                         "--out=OUT writes OUT/ensemble).")


def _missing(path: epath.Path) -> EnsembleError:
    """A file of the ensemble that is not there (a copy of the directory cut short or partial)."""
    return EnsembleError(f"{path} is missing: the ensemble directory is incomplete; copy it whole "
                         "again, or write it again with python -m cer_jax.fuse (its --out=OUT "
                         "writes OUT/ensemble).")


def _read_npz(path: epath.Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise _missing(path)
    data = path.read_bytes()
    # A truncated archive fails in np.load or only when an array is read, each way differently.
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else (
            error.__class__.__name__)
        raise _damaged(path, f"not a complete .npz archive: {reason}") from error


def _read_json(path: epath.Path) -> dict[str, Any]:
    if not path.exists():
        raise _missing(path)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _damaged(path, f"not valid JSON: {error.msg} at line {error.lineno} column "
                             f"{error.colno}") from error
    except UnicodeDecodeError as error:
        raise _damaged(path, "not UTF-8 text") from error
    if not isinstance(value, dict):
        raise _damaged(path, f"it is {_json_kind(value)}, not an object")
    return value


# What load_ensemble reads from each file (dotted keys are nested), so that one edited by hand
# is named, not a KeyError. A member's `resize_size` is read only by the "resize_crop" view.
_MANIFEST_KEYS = {"class_names": list, "members": list, "strategy.name": str,
                  "strategy.state_file": str}
_MEMBER_ENTRY_KEYS = {"name": str, "model": str, "dir": str, "preprocessing.image_size": int,
                      "preprocessing.normalization": str, "preprocessing.eval_resize": str}
_MEMBER_CONFIG_KEYS = {"model.name": str, "dataset_info.num_classes": int}


def _check_keys(value: Any, kinds: dict[str, type], path: epath.Path, where: str = "") -> None:
    """`value` holds each dotted key of `kinds` with a value of its type, or `path` is damaged."""
    for dotted, kind in kinds.items():
        name, node = where, value
        for key in dotted.split("."):
            if not isinstance(node, dict):
                raise _damaged(path, f"{name!r} is {_json_kind(node)}, not an object")
            name = f"{name}.{key}" if name else key
            if key not in node:
                raise _damaged(path, f"it has no {name!r}")
            node = node[key]
        if not isinstance(node, kind) or isinstance(node, bool) is not (kind is bool):
            raise _damaged(path, f"{name!r} is {_json_kind(node)}, not {_json_kind(kind())}")


def _check_manifest(manifest: dict[str, Any], path: epath.Path) -> None:
    _check_keys(manifest, _MANIFEST_KEYS, path)
    if not manifest["members"]:
        raise _damaged(path, "its 'members' list is empty")
    for index, entry in enumerate(manifest["members"]):
        where = f"members[{index}]"
        _check_keys(entry, _MEMBER_ENTRY_KEYS, path, where)
        if entry["preprocessing"]["eval_resize"] != "resize":
            _check_keys(entry, {"preprocessing.resize_size": int}, path, where)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    return {dict: "an object", list: "an array", str: "a string", type(None): "null"}.get(
        type(value), "a number")


def _check_model_options(config: ml_collections.ConfigDict, where: str) -> None:
    """A member whose config.json names a model or model option this cer_jax lacks was written
    by another version (copied to a machine with another install): one line, not the model
    constructor's TypeError."""
    name = str(config.model.name)
    try:
        options = models.default_options(name)
    except models.ModelConfigError:
        unknown = f"model {name!r} (this cer_jax has: {', '.join(models.available_models())})"
    else:
        extra = sorted(key for key in config.model if key != "name" and key not in options)
        if not extra:
            return
        unknown = f"option model.{extra[0]} of model {name!r}"
    raise EnsembleError(
        f"{where}/{CONFIG_FILE} names {unknown}, which this cer_jax does not know: the ensemble "
        "was written by another cer_jax version; predict with that version, or write the "
        "ensemble again with this one (python -m cer_jax.fuse; its --out=OUT writes "
        "OUT/ensemble).")


def build_model(config: ml_collections.ConfigDict, arrays: dict[str, np.ndarray], where: str):
    """The network named by config.model with its state from path-keyed `arrays`. Built
    abstractly, as a checkpoint restore is: a concrete build would compile and draw a random
    initialisation only to overwrite it (12 of the 17 s it took to load the demo's ensemble)."""
    _check_model_options(config, where)
    graphdef, abstract = train_state.abstract_model_state(
        config, int(config.dataset_info.num_classes))
    missing = []

    def fill(path, leaf):
        if _is_key(leaf):
            return jax.random.split(jax.random.key(0), leaf.shape) if leaf.shape else (
                jax.random.key(0))
        name = _key_name(path)
        if name not in arrays:
            missing.append(name)
            return np.zeros(leaf.shape, leaf.dtype)
        value = arrays[name]
        if tuple(value.shape) != tuple(leaf.shape):
            raise EnsembleError(
                f"{where}: {name} has shape {value.shape}, the model built from its config.json "
                f"expects {leaf.shape}: the member was written by an incompatible version; "
                "write the ensemble again with python -m cer_jax.fuse."
            )
        return jnp.asarray(value, dtype=leaf.dtype)

    filled = jax.tree_util.tree_map_with_path(fill, abstract)
    if missing:
        raise EnsembleError(
            f"{where} lacks {len(missing)} array(s) the model needs (e.g. {missing[0]!r}): the "
            "member was written by an incompatible version; write the ensemble again with "
            "python -m cer_jax.fuse."
        )
    return train_state.merge_model(graphdef, filled["params"], filled["rest"])


# --- writing ---------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "member"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write_ensemble(
    out: str | os.PathLike[str],
    members: Sequence[tuple[str, nnx.Module, ml_collections.ConfigDict]],
    strategy: Any,
    class_names: Sequence[str],
    *,
    dataset: str | None = None,
    extra: dict[str, Any] | None = None,
) -> epath.Path:
    """Writes the ensemble directory `out` (replacing one that is there; a leading `~` is the
    home folder, as load_ensemble reads it) and returns its path.

    members: (name, model, resolved training config) per member, in the order the fusion saw
    them. strategy: a `cer_jax.fusion.strategies.Fitted` with its `name` and `state` set (as
    `fit_strategy` returns it).
    """
    if not getattr(strategy, "name", ""):
        raise EnsembleError("The fitted strategy has no name: fit it with fit_strategy(...).")
    out = epath.Path(out).expanduser()  # as load_ensemble reads it
    # A wrong member or Ctrl-C leaves the earlier ensemble and no temporary folder behind.
    with paths.replacing_folder(out, manifest=ENSEMBLE_FILE) as tmp:
        entries = []
        for index, (name, model, config) in enumerate(members):
            member_classes = list(config.dataset_info.class_names)
            if member_classes != list(class_names):
                raise EnsembleError(
                    f"Member {name} predicts {member_classes}, the ensemble {list(class_names)}."
                )
            subdir = f"members/{index:02d}_{_safe(name)}"
            (tmp / subdir).mkdir(parents=True)
            (tmp / subdir / CONFIG_FILE).write_text(
                config.to_json_best_effort(indent=2, sort_keys=True)
            )
            _, params, rest = train_state.split_model(model)
            _write_npz(tmp / subdir / MODEL_FILE, _flat_state(params, rest))
            entries.append({
                "name": name,
                "model": str(config.model.name),
                "dir": subdir,
                "preprocessing": checkpointing.eval_preprocessing(config.input),
            })
        state = {k: np.asarray(v) for k, v in strategy.state.items()}
        _write_npz(tmp / STRATEGY_FILE, state)
        manifest = {
            "format": FORMAT,
            "kind": KIND,
            "class_names": list(class_names),
            "dataset": dataset,
            "aligned_size": ALIGNED_SIZE,
            "strategy": {
                "name": strategy.name,
                "params": strategy.params,
                "state_file": STRATEGY_FILE,
            },
            "members": entries,
            **(extra or {}),
        }
        (tmp / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return out


def write_from_fusion(
    out: str | os.PathLike[str],
    members: Sequence[Any],
    strategy: Any,
    class_names: Sequence[str],
) -> epath.Path | None:
    """The ensemble of `cer_jax.fusion.evaluator.fuse`: each member's best checkpoint (restored with
    `cer_jax.checkpointing.restore_best_state(member.workdir, ...)`) plus the fitted strategy.

    `members` are `cer_jax.fusion.members.Member`s (name, workdir, info). A member without a
    best checkpoint (an export copied from elsewhere) means no ensemble: logged, None returned,
    and an earlier fusion's artefact at `out` removed (it would not match the new report).
    The same holds when a member's best checkpoint is no longer the step whose export the
    fusion was fitted on (its run saved a better step meanwhile): the artefact would pair the
    fitted strategy with another model.
    Every process must call it (Orbax restores collectively); only process 0 writes, and every
    process raises when that write failed (the others exited 0 while process 0 failed).
    """
    restored, steps = [], []
    for member in members:
        try:
            graphdef, step, state, config = checkpointing.restore_best_state(
                member.workdir, sharding.local_mesh())
        except (checkpointing.WorkdirError, FileNotFoundError, ValueError) as error:
            _no_ensemble(out, f"member {member.name} has no restorable best checkpoint ({error})")
            return None
        fused_step = member.info.get("step")
        if fused_step is not None and int(fused_step) != int(step):
            _no_ensemble(
                out, f"member {member.name}'s best checkpoint is now step {step}, but the fusion "
                f"was fitted on the outputs of step {fused_step} (its run saved a new best "
                "meanwhile); run python -m cer_jax.fuse again once its training has finished")
            return None
        model = train_state.merge_model(graphdef, state["params"], state["rest"])
        restored.append((member.name, model, config))
        steps.append(int(step))
    datasets = {str(m.info.get("dataset")) for m in members if m.info.get("dataset")}
    path = sharding.on_process_0(
        lambda: write_ensemble(
            out, restored, strategy, class_names,
            dataset=datasets.pop() if len(datasets) == 1 else None,
            extra={"workdirs": [str(m.workdir) for m in members], "steps": steps}),
        "the writing of the ensemble", where=f"writes it to {out}",
        io_error=lambda reason: EnsembleWriteError(
            f"The ensemble could not be written to {out} ({reason}); free space there or give "
            "a folder this user may write, and run the fusion again."))
    if path is None:
        return None
    logging.info("Ensemble (%s fusion of %d members) written to %s; use it with "
                 "python -m cer_jax.predict --ensemble=%s IMAGE_OR_VIDEO...",
                 strategy.name, len(members), path, path)
    return path


def remove_earlier(out: str | os.PathLike[str], why: str) -> bool:
    """Removes an earlier fusion's artefact at `out`, which does not match the new report
    (`why` says what comes instead); True if there was one. Every process must call it:
    process 0 removes, and every process raises when that failed (else the others would exit 0
    while it failed)."""
    stale = epath.Path(out)

    def remove() -> bool:
        if not stale.exists():
            return False
        stale.rmtree()
        return True

    return bool(sharding.on_process_0(
        remove, "the removal of the earlier ensemble", where=f"removes {stale}",
        io_error=lambda reason: EnsembleWriteError(
            f"The earlier ensemble at {stale} could not be removed ({reason}) and does not "
            f"match the new report ({why}); remove it yourself, or python -m cer_jax.predict "
            "--ensemble would still use it.")))


def _no_ensemble(out: str | os.PathLike[str], reason_no_new: str) -> None:
    """Logs why fusion writes no ensemble and removes an earlier fusion's artefact at `out`
    (it would not match the new report)."""
    removed = remove_earlier(out, f"no new one is written: {reason_no_new}")
    logging.warning("No ensemble artefact written%s: %s.",
                    f" (the earlier one at {out} was removed)" if removed else "", reason_no_new)


# --- loading and predicting ------------------------------------------------------------------


@dataclasses.dataclass
class Member:
    name: str
    model_name: str
    preprocessing: dict[str, Any]
    graphdef: Any
    state: Any  # (params, rest) nnx states

    def __post_init__(self) -> None:
        graphdef = self.graphdef

        @functools.partial(jax.jit, compiler_options=sharding.compiler_options())
        def apply(state, images):
            model = nnx.merge(graphdef, *state)
            output = model(images, train=False)
            return output.logits.astype(jnp.float32), output.features.astype(jnp.float32)

        self._apply = apply

    def dispatch(self, faces: np.ndarray | Sequence[np.ndarray],
                 batch_bucket: int) -> tuple[jax.Array, jax.Array, int]:
        """(logits [B, K], features [B, D], N) of uint8 RGB faces ([N, H, W, 3], or [H, W, 3]
        each, of any sizes), padded to a bucket B >= N and left on the device, still being
        computed: the next member's host preprocessing overlaps this one's forward pass."""
        images = np.stack([eval_view(face, self.preprocessing) for face in faces])
        n = len(images)
        padded = max(batch_bucket, 1)
        while padded < n:
            padded *= 2
        if padded > n:
            images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]),
                                                      images.dtype)])
        logits, features = self._apply(self.state, jnp.asarray(images))
        return logits, features, n


@dataclasses.dataclass
class Prediction:
    probabilities: np.ndarray  # [N, K] fused
    member_probabilities: np.ndarray  # [M, N, K]

    @property
    def classes(self) -> np.ndarray:
        return self.probabilities.argmax(-1)


@dataclasses.dataclass
class Ensemble:
    """A loaded ensemble directory. `predict(faces)` takes aligned uint8 RGB faces."""

    path: str
    class_names: list[str]
    dataset: str | None
    strategy_name: str
    strategy_params: dict[str, Any]
    strategy_state: dict[str, Any]
    members: list[Member]
    aligned_size: int = ALIGNED_SIZE

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def predict(self, faces: np.ndarray | Sequence[np.ndarray], *, flip_tta: bool = False,
                batch_bucket: int = 8) -> Prediction:
        """Fused and per-member probabilities of uint8 RGB faces: an array [N, H, W, 3], or a
        sequence of [H, W, 3] faces that may differ in size. Each member applies its own eval
        view (`eval_view`) to each face as given, as the training pipeline's evaluation does to
        each image of a dataset.

        flip_tta: each member's logits and features are averaged over the face and its mirror
        image before fusion.
        """
        if isinstance(faces, np.ndarray):
            if faces.ndim != 4 or faces.shape[-1] != 3:
                raise ValueError(f"faces must be uint8 [N, H, W, 3], got {faces.shape}")
            dtypes = [faces.dtype]
        else:
            faces = [np.asarray(face) for face in faces]
            bad = [face.shape for face in faces if face.ndim != 3 or face.shape[-1] != 3]
            if bad:
                raise ValueError(f"each face must be uint8 [H, W, 3], got {bad[0]}")
            dtypes = [face.dtype for face in faces]
        odd = [d for d in dtypes if not np.issubdtype(d, np.integer)]
        if odd:
            # eval_view divides by 255: images already in [0, 1] would be read as near black.
            raise ValueError(f"faces must be uint8 RGB in [0, 255], got {odd[0]} (images in "
                             "[0, 1]: multiply by 255 and cast to uint8)")
        # Other integer types pass when their values are 8-bit ones (int64 after numpy
        # arithmetic, say); a 16-bit image (0-65535) would be clipped to near white.
        wide = [face for face in (faces if isinstance(faces, list) else [faces])
                if face.dtype != np.uint8 and face.size and (face.min() < 0 or face.max() > 255)]
        if wide:
            raise ValueError(
                f"faces must be uint8 RGB in [0, 255], got {wide[0].dtype} values from "
                f"{wide[0].min()} to {wide[0].max()} (16-bit images: divide by 257 and cast "
                "to uint8)")
        if not len(faces):
            num_classes = len(self.class_names)
            return Prediction(np.zeros((0, num_classes)),
                              np.zeros((len(self.members), 0, num_classes)))
        views = [faces] + ([[face[:, ::-1] for face in faces]] if flip_tta else [])
        # Every forward pass is dispatched before any result is read.
        pending = [[member.dispatch(view, batch_bucket) for view in views]
                   for member in self.members]
        logits, features = [], []
        for outputs in pending:
            z = np.mean([np.asarray(z)[:n] for z, _, n in outputs], axis=0)
            f = np.mean([np.asarray(f)[:n] for _, f, n in outputs], axis=0)
            logits.append(z)
            features.append(f)
        data = strategies.FusionData(
            logits=np.stack(logits), features=tuple(features),
            labels=np.zeros(len(faces), np.int64),
        )
        try:
            fused = strategies.predict_from_state(self.strategy_name, self.strategy_state, data)
        except (KeyError, ValueError, IndexError, TypeError) as error:  # see _check_fusion
            raise _mismatched(epath.Path(self.path).expanduser() / STRATEGY_FILE, _misfit(
                self.strategy_name, len(self.members), len(self.class_names), error)) from error
        return Prediction(np.asarray(fused, np.float64), data.probabilities())


def _scalar_or_array(value: np.ndarray) -> Any:
    if value.ndim == 0:
        return value.item()
    return value


def _check_fusion(name: str, state: dict[str, Any], num_members: int, num_classes: int,
                  manifest_path: epath.Path, state_path: epath.Path) -> None:
    """The fitted fusion fits the members and classes that ensemble.json lists. A member taken
    out of ensemble.json by hand left its weight behind, which numpy broadcast over the others
    (a silently different fusion), and other mismatches failed at the first face."""
    if name not in strategies.STRATEGIES:
        raise EnsembleError(
            f"{manifest_path} names the fusion strategy {name!r}, which this cer_jax does not "
            f"know (it has: {', '.join(strategies.STRATEGIES)}): the ensemble was written by "
            "another cer_jax version; predict with that version, or write the ensemble again "
            "with this one (python -m cer_jax.fuse; its --out=OUT writes OUT/ensemble).")
    for key in ("weights", "temperatures"):
        if key in state and np.shape(state[key]) != (num_members,):
            raise _mismatched(state_path, f"its {key} are for {np.size(state[key])} members, "
                              f"{ENSEMBLE_FILE} lists {num_members}")
    if name == "feature_mlp":  # its inputs are the members' features: checked at the first face
        return
    data = strategies.FusionData(
        logits=np.zeros((num_members, 2, num_classes), np.float32),
        features=tuple(np.zeros((2, 1), np.float32) for _ in range(num_members)),
        labels=np.zeros(2, np.int64))
    try:
        fused = np.asarray(strategies.predict_from_state(name, state, data))
    except (KeyError, ValueError, IndexError, TypeError) as error:
        raise _mismatched(state_path, _misfit(name, num_members, num_classes, error)) from error
    if fused.shape != (2, num_classes):
        raise _mismatched(state_path, _misfit(name, num_members, num_classes,
                                              f"it fuses {fused.shape[-1]} classes"))


def _misfit(name: str, num_members: int, num_classes: int, error: Any) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    return f"its {name} fusion, for {num_members} members and {num_classes} classes: {reason}"


def load_ensemble(path: str | os.PathLike[str]) -> Ensemble:
    """Loads an ensemble directory written by `write_ensemble` (a leading `~` is the home
    folder, as on the command line)."""
    root = epath.Path(path).expanduser()
    manifest_path = root / ENSEMBLE_FILE
    if not manifest_path.exists():
        raise EnsembleError(
            f"{manifest_path} not found: {os.fspath(path)!r} is not an ensemble directory "
            "(`python -m cer_jax.fuse ... --out=OUT` writes one to OUT/ensemble)."
        )
    manifest = _read_json(manifest_path)
    if manifest.get("kind") != KIND or manifest.get("format") != FORMAT:
        raise EnsembleError(
            f"{manifest_path} is format {manifest.get('format')!r} of "
            f"{manifest.get('kind')!r}; this cer_jax reads format {FORMAT} of {KIND!r}: "
            "predict with the cer_jax version that wrote it, or write the ensemble again with "
            "this one (python -m cer_jax.fuse; its --out=OUT writes OUT/ensemble)."
        )
    _check_manifest(manifest, manifest_path)
    class_names = list(manifest["class_names"])
    members = []
    for entry in manifest["members"]:
        member_dir = root / entry["dir"]
        config_json = _read_json(member_dir / CONFIG_FILE)
        _check_keys(config_json, _MEMBER_CONFIG_KEYS, member_dir / CONFIG_FILE)
        config = ml_collections.ConfigDict(config_json)
        if int(config.dataset_info.num_classes) != len(class_names):
            raise _mismatched(member_dir / CONFIG_FILE, (
                f"its model predicts {int(config.dataset_info.num_classes)} classes, "
                f"{ENSEMBLE_FILE} names {len(class_names)}"))
        model = build_model(config, _read_npz(member_dir / MODEL_FILE), os.fspath(member_dir))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        members.append(Member(
            name=entry["name"], model_name=entry["model"],
            preprocessing=dict(entry["preprocessing"]), graphdef=graphdef,
            state=(params, rest),
        ))
    strategy = manifest["strategy"]
    state = {k: _scalar_or_array(v) for k, v in _read_npz(root / strategy["state_file"]).items()}
    _check_fusion(strategy["name"], state, len(members), len(class_names),
                  manifest_path, root / strategy["state_file"])
    return Ensemble(
        path=os.fspath(path),
        class_names=class_names,
        dataset=manifest.get("dataset"),
        strategy_name=strategy["name"],
        strategy_params=dict(strategy.get("params") or {}),
        strategy_state=state,
        members=members,
        aligned_size=int(manifest.get("aligned_size", ALIGNED_SIZE)),
    )
