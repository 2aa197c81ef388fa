"""Read checkpoint files into flat {name: float32 numpy array} dicts.

Every file is opened through etils epath, so a path may be local or remote (gs://...); nothing
is downloaded from a model hub. PyTorch is imported only to unpickle `.pth` / `.pth.tar` / `.bin`
files; `.npz` and `.safetensors` (bfloat16 ones too, through ml_dtypes) need no PyTorch.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from typing import IO, Any

import ml_dtypes
import numpy as np
from etils import epath

from cer_jax.errors import UserError

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".tar", ".ckpt")
WEIGHT_SUFFIXES = (".npz", ".safetensors", *TORCH_SUFFIXES)
# transformers' names for one part of a sharded checkpoint, and for the index of the parts.
_SHARD = re.compile(r".*-\d{5}-of-\d{5}\.(safetensors|bin)")
_SHARD_INDEX = (".safetensors.index.json", ".bin.index.json")


class CheckpointReadError(UserError):
    """A checkpoint file that is missing, of an unknown kind, or cannot be parsed."""


# The one file read with keep=True, for the next read of it: a run start reads its weights to
# check that they fit before the data work, and again to load them after it (on gs://, the
# whole file each time). Keyed by the path and the file's size and modification time.
_kept: tuple[tuple[str, int, float], dict[str, np.ndarray]] | None = None


def read_checkpoint(
    path: str | os.PathLike[str] | epath.Path, *, keep: bool = False
) -> dict[str, np.ndarray]:
    """Returns every array in the file at `path`, keyed by its name in that file.

    With `keep`, the arrays stay in memory for the next read of the same unchanged file (one
    file at most); a read without it takes them and lets them go.

    `.npz` keys keep their '/'-joined names; a big_vision training checkpoint is unwrapped as
    big_vision's own `utils.load_params` does (the `params/...` subtree, else `opt/target/...`;
    the optimizer state beside it is not read). PyTorch state dicts and safetensors files lose
    DataParallel `module.` and torch.compile `_orig_mod.` prefixes; PyTorch state dicts also a
    Lightning module's `model.` when every key has it, and are unwrapped from a `state_dict` /
    `model` / ... entry (`_STATE_DICT_ENTRIES`) when the file holds a dict of training state
    (the MA-Net release does). A folder stands for the one weights file in it.
    """
    global _kept
    key = _kept_key(path)
    if _kept is not None and key is not None and _kept[0] == key:
        arrays = dict(_kept[1])
    else:
        arrays = _dispatch(path, keys_only=False)
        key = _kept_key(path)
    _kept = (key, dict(arrays)) if keep and key is not None else None
    return arrays


def _kept_key(path: str | os.PathLike[str] | epath.Path) -> tuple[str, int, float] | None:
    """What identifies the file read: its path, size and modification time (None when it
    cannot be stat'ed; the read then says why)."""
    try:
        stat = epath.Path(path).expanduser().stat()
    except (OSError, ValueError):
        return None
    return os.fspath(path), stat.length, stat.mtime


def checkpoint_keys(path: str | os.PathLike[str] | epath.Path, *, keep: bool = False
                    ) -> list[str]:
    """The names `read_checkpoint` would return, cheaply where the format allows it: `.npz` and
    safetensors read their index only; a PyTorch pickle has to be loaded (unless kept). With
    `keep`, a pickle loaded for its names stays in memory for the next read, as
    `read_checkpoint(keep=True)`'s arrays do (a run start reads it for its names, to check it
    and to load it: on gs://, the whole file each time)."""
    key = _kept_key(path)
    if _kept is not None and key is not None and _kept[0] == key:
        return list(_kept[1])
    if keep and _is_pickle(path):
        return list(read_checkpoint(path, keep=True))
    return _dispatch(path, keys_only=True)


def _is_pickle(path: str | os.PathLike[str] | epath.Path) -> bool:
    """Whether the weights at `path` (a file, or a folder standing for its weights file) are a
    PyTorch pickle; False where that cannot be told (the read then says why)."""
    return weights_file_name(path).lower().endswith(TORCH_SUFFIXES)


def weights_file_name(path: str | os.PathLike[str] | epath.Path) -> str:
    """The name of the file whose weights a read of `path` returns: a folder's chosen weights
    file (`_weights_in_directory`); '' where that cannot be told (the read then says why)."""
    file = epath.Path(path).expanduser()
    try:
        if file.is_dir():
            file, _ = _weights_in_directory(file, os.fspath(path))
    except (CheckpointReadError, OSError):
        return ""
    return file.name


def _dispatch(path: str | os.PathLike[str] | epath.Path, *, keys_only: bool) -> Any:
    shown = os.fspath(path)  # for messages: what the user passed ('gs://...' stays so)
    file = epath.Path(path).expanduser()
    if file.is_dir():
        file, shown = _weights_in_directory(file, shown)
    _check_not_sharded(file, shown)
    if not file.is_file():
        raise CheckpointReadError(
            f"Pre-trained checkpoint {shown!r} does not exist. Download it yourself (see README, "
            "'Bring pre-trained weights') and set config.init.checkpoint to its path (local or gs://)."
        )
    name = file.name.lower()
    try:
        _check_not_a_pointer(file, shown)
        if name.endswith(".npz"):
            with file.open("rb") as f:
                if f.read(2) != b"PK":  # else np.load's message is about pickles
                    raise CheckpointReadError(
                        f"Cannot read checkpoint {shown!r}: not a .npz file (the zip archive "
                        "of arrays that numpy.savez writes).")
                _check_zip_complete(f, shown)
                f.seek(0)
                with np.load(f, allow_pickle=False) as data:
                    selected = _npz_params(data.files, shown)
                    if keys_only:
                        return list(selected)
                    return {k: _as_float_array(data[key]) for k, key in selected.items()}
        if name.endswith(".safetensors"):  # e.g. a DataParallel state dict converted to it
            if keys_only:
                with file.open("rb") as f:
                    return [_strip_wrappers(key) for key in _safetensors_keys(f, shown)]
            return {_strip_wrappers(k): v for k, v in _read_safetensors(file, shown).items()}
        if name.endswith(TORCH_SUFFIXES):
            state = _read_torch(file, shown)
            return list(state) if keys_only else state
    except CheckpointReadError:
        raise
    except EOFError as e:  # a legacy PyTorch pickle cut short: torch's EOFError says nothing
        raise CheckpointReadError(_ENDS_EARLY.format(shown=shown)) from e
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError, KeyError,
            pickle.UnpicklingError) as e:
        raise CheckpointReadError(f"Cannot read checkpoint {shown!r}: {e}") from e
    raise CheckpointReadError(
        f"Unknown checkpoint format for {shown!r}: expected {_READ_FORMATS}."
        + (_OTHER_HUB_WEIGHTS if _OTHER_HUB_WEIGHT_FILES.fullmatch(name) else "")
    )


_READ_FORMATS = (".npz (big_vision / AugReg), .safetensors (Hugging Face / timm) or a PyTorch "
                 f"file ({', '.join(TORCH_SUFFIXES)})")
# The Flax (flax_model.msgpack) and TensorFlow (tf_model.h5) weights that Hugging Face
# repositories hold beside model.safetensors.
_OTHER_HUB_WEIGHT_FILES = re.compile(r"(flax_model.*\.msgpack|tf_model.*\.h5)")
_OTHER_HUB_WEIGHTS = (" A Hugging Face repository's Flax or TensorFlow weights are not read: "
                      "download its model.safetensors.")


def _check_zip_complete(f: IO[bytes], shown: str) -> None:
    """A zip archive (`.npz`, torch.save's format) cut short has lost the directory at its end:
    one line saying so, not np.load's "File is not a zip file" or torch's "[Errno 22] Invalid
    argument". `f` is open and seekable."""
    f.seek(0)
    if not zipfile.is_zipfile(f):
        raise CheckpointReadError(_ENDS_EARLY.format(shown=shown))


_ENDS_EARLY = ("Cannot read checkpoint {shown!r}: the file ends early (an interrupted download "
               "or copy?); download it again.")


# What a Git LFS pointer file (a repository cloned without `git lfs`, e.g. from the Hugging Face
# Hub) starts with, in place of the weights.
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def _check_not_a_pointer(file: epath.Path, shown: str) -> None:
    with file.open("rb") as f:
        start = f.read(len(_LFS_POINTER))
    if start == _LFS_POINTER:
        raise CheckpointReadError(
            f"{shown!r} is a Git LFS pointer, not the weights (a repository cloned without Git "
            "LFS): run `git lfs pull` in the clone, or download the file itself (e.g. "
            "`huggingface-cli download`)."
        )


def _weights_in_directory(folder: epath.Path, shown: str) -> tuple[epath.Path, str]:
    """The one weights file in `folder` (a Hugging Face `save_pretrained` / Hub snapshot folder
    or a folder holding a single download), so that passing the folder works too."""
    names = sorted(p.name for p in folder.iterdir())
    lower = {name.lower(): name for name in names}
    for preferred in ("model.safetensors", "pytorch_model.bin"):  # what transformers loads first
        if preferred in lower:
            chosen = lower[preferred]
            break
    else:
        for name in sorted(names, key=lambda n: not n.lower().endswith(_SHARD_INDEX)):
            _check_not_sharded(folder / name, f"{shown.rstrip('/')}/{name}")  # the index first
        weights = [name for name in names if name.lower().endswith(WEIGHT_SUFFIXES)
                   and (folder / name).is_file()]
        if not weights and "snapshots" in names and (folder / "snapshots").is_dir():
            # huggingface_hub's cache folder of a model (models--org--name): its files are in
            # snapshots/<revision>/, named by hash in blobs/.
            revisions = sorted(p.name for p in (folder / "snapshots").iterdir())
            raise CheckpointReadError(
                f"Pre-trained checkpoint {shown!r} is a Hugging Face cache folder; pass the "
                f"folder of one revision in it, {shown.rstrip('/')}/snapshots/REVISION (found: "
                f"{', '.join(revisions) or 'none'})."
            )
        if not weights:  # e.g. a Hub download of the Flax weights alone
            other = any(_OTHER_HUB_WEIGHT_FILES.fullmatch(n.lower()) for n in names)
            raise CheckpointReadError(
                f"Pre-trained checkpoint {shown!r} is a directory without weights cer_jax reads "
                f"(found: {', '.join(names) or 'nothing'}); expected {_READ_FORMATS}."
                + (_OTHER_HUB_WEIGHTS if other else "")
            )
        if len(weights) != 1:
            raise CheckpointReadError(
                f"Pre-trained checkpoint {shown!r} is a directory; pass the weights file in it "
                f"(found: {', '.join(weights)})."
            )
        chosen = weights[0]
    return folder / chosen, f"{shown.rstrip('/')}/{chosen}"


def _check_not_sharded(file: epath.Path, shown: str) -> None:
    """A sharded Hugging Face checkpoint (an index and `-0000k-of-0000n` parts) is refused in one
    line with the way to merge it: one part alone would fail as a model with missing tensors."""
    name = file.name.lower()
    if name.endswith(_SHARD_INDEX) or _SHARD.fullmatch(name):
        folder = shown.rstrip("/").rsplit("/", 1)[0] if "/" in shown else "."
        raise CheckpointReadError(
            f"Pre-trained checkpoint {shown!r} belongs to a sharded Hugging Face checkpoint, "
            f"which cer_jax does not read: merge the parts in {folder!r} into one file (load "
            "the folder with transformers and save it with a max_shard_size above the model's "
            "size), and pass that model.safetensors."
        )


def _npz_params(files: list[str], path: str) -> dict[str, str]:
    """{name: key in the file} for the parameters of an `.npz`, as big_vision's
    `utils.load_params` selects them: a top-level `params` subtree (checkpoints with optax state),
    else `opt/target` (checkpoints of the old flax.optim optimizer), else the whole file."""
    tops = {key.split("/", 1)[0] for key in files}
    for prefix, top in (("params/", "params"), ("opt/target/", "opt")):
        if top in tops:
            selected = {k.removeprefix(prefix): k for k in files if k.startswith(prefix)}
            if not selected:
                raise CheckpointReadError(
                    f"{path!r} has a top-level {top!r} entry but no {prefix!r} parameters; "
                    "big_vision's loader would not find parameters in it either."
                )
            return selected
    return {key: key for key in files}


def _as_float_array(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "V" and array.dtype.itemsize == 2:
        # np.savez stores bfloat16 as 2-byte void; big_vision's `recover_dtype` reads it back so.
        import ml_dtypes

        array = array.view(ml_dtypes.bfloat16)
    if np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16":
        # float32 ones need no copy: each is the file's own (a fresh array, or a read-only view
        # of the safetensors buffer read), never written to.
        return array.astype(np.float32, copy=False)
    return array


# safetensors' own limit on the JSON header (a larger one is not a safetensors file).
_SAFETENSORS_MAX_HEADER = 100_000_000


def _safetensors_keys(f: IO[bytes], shown: str) -> list[str]:
    """The tensor names in a safetensors file, from its header alone. Sorted, as safetensors'
    `safe_open(...).keys()` gives them."""
    return sorted(key for key in _safetensors_header(f, shown) if key != "__metadata__")


def _safetensors_header(f: IO[bytes], shown: str) -> dict[str, Any]:
    """A safetensors file's header: an 8-byte little-endian length, then that many bytes of
    JSON {name: {dtype, shape, data_offsets}, "__metadata__": {...}}; the data follows it."""
    prefix = f.read(8)
    size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if not 0 < size <= _SAFETENSORS_MAX_HEADER:
        raise CheckpointReadError(f"Cannot read checkpoint {shown!r}: not a safetensors file.")
    raw = f.read(size)
    if len(raw) < size and raw[:1] == b"{":  # cut inside its JSON header
        raise CheckpointReadError(_ENDS_EARLY.format(shown=shown))
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointReadError(
            f"Cannot read checkpoint {shown!r}: not a safetensors file ({e})."
        ) from e
    if not isinstance(header, dict):
        raise CheckpointReadError(f"Cannot read checkpoint {shown!r}: not a safetensors file.")
    return header


def _read_safetensors(file: epath.Path, shown: str) -> dict[str, np.ndarray]:
    """A safetensors file read from its header and data_offsets (the format's whole spec): each
    tensor is a view of the one buffer read, so a file takes its own size in memory once, not
    twice (safetensors.numpy.load copies every tensor out of it); BF16, which numpy lacks,
    through ml_dtypes. No PyTorch needed."""
    data = file.read_bytes()
    header = _safetensors_header(io.BytesIO(data), shown)
    start = 8 + int.from_bytes(data[:8], "little")
    out = {}
    for name in sorted(key for key in header if key != "__metadata__"):
        entry = header[name] if isinstance(header[name], dict) else {}
        if entry.get("dtype") not in _SAFETENSORS_DTYPES:
            raise CheckpointReadError(
                f"Cannot read checkpoint {shown!r}: tensor {name!r} has dtype "
                f"{entry.get('dtype')!r}; cer_jax reads {', '.join(_SAFETENSORS_DTYPES)}.")
        dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
        try:
            (begin, end), shape = map(int, entry["data_offsets"]), tuple(map(int, entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise CheckpointReadError(
                f"Cannot read checkpoint {shown!r}: tensor {name!r} has no valid shape and "
                "data_offsets; not a valid safetensors file.") from None
        if start + end > len(data):
            raise CheckpointReadError(_ENDS_EARLY.format(shown=shown))
        if not 0 <= begin <= end or end - begin != math.prod(shape) * dtype.itemsize:
            raise CheckpointReadError(
                f"Cannot read checkpoint {shown!r}: tensor {name!r} of shape {list(shape)} has "
                f"data_offsets {[begin, end]}, not its size; not a valid safetensors file.")
        array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start + begin)
        out[name] = _as_float_array(array.reshape(shape))
    return out


# safetensors dtype names -> little-endian numpy dtypes (bfloat16 from ml_dtypes, as jax has it).
_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": ml_dtypes.bfloat16,
                       "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8",
                       "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def _read_torch(file: epath.Path, shown: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointReadError(
            f"{shown!r} is a PyTorch pickle; reading it needs PyTorch (pip install torch). "
            "Or convert it to .safetensors first."
        ) from e
    with file.open("rb") as f:
        if f.read(2) == b"PK":  # torch.save's zip format (PyTorch >= 1.6)
            _check_zip_complete(f, shown)
            _check_not_torchscript(f, shown)
        f.seek(0)
        try:
            obj = _torch_load(torch, f, shown)
        except (pickle.UnpicklingError, EOFError, RuntimeError, IndexError, struct.error) as e:
            f.seek(0)
            start = f.read(16)
            if start[:1] == b"\x80" and _cut_short(e):  # a legacy pickle cut short
                raise CheckpointReadError(_ENDS_EARLY.format(shown=shown)) from e
            if start[:1] == b"\x80" or start[:2] == b"PK":
                raise  # a pickle (torch.save before PyTorch 1.6) or a zip archive (since)
            # An empty file, an HTML error page, ...: torch's own message would suggest
            # weights_only=False, which runs the file's code and cannot help.
            raise CheckpointReadError(
                f"Cannot read checkpoint {shown!r}: not a PyTorch file ("
                + (f"it starts with {start!r}" if start else "it is empty")
                + "; torch.save writes a zip archive or a pickle); download it again."
            ) from None
    state = _unwrap_state_dict(obj, shown)
    out = {}
    for key, value in state.items():
        if isinstance(value, _Discarded):
            raise CheckpointReadError(
                f"{shown!r}: state-dict entry {key!r} is a pickled {value.refused} object, not a "
                "tensor; re-save the weights with torch.save(model.state_dict())."
            )
        if not hasattr(value, "detach"):
            continue  # num_batches_tracked-style scalars are tensors; other entries are metadata
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        out[_strip_wrappers(key)] = tensor.numpy()
    if out and all(key.startswith(_LIGHTNING_PREFIX) for key in out):
        out = {_strip_wrappers(key[len(_LIGHTNING_PREFIX):]): v for key, v in out.items()}
    return out


def _cut_short(error: Exception) -> bool:
    """Whether torch.load's `error` on a legacy (PyTorch < 1.6) pickle means the file ends
    early: its weights-only unpickler then fails on a short read (an IndexError or a
    struct.error from inside it, or an EOFError), and the storages after the pickle with
    "unexpected EOF"; none of which says so."""
    return (isinstance(error, (EOFError, IndexError, struct.error))
            or "unexpected EOF" in str(error) or "truncated" in str(error))


def _check_not_torchscript(f: IO[bytes], shown: str) -> None:
    """A TorchScript archive (torch.jit.save; its records include constants.pkl) in one line: torch
    refuses it under weights_only with advice to load it with weights_only=False, which would
    run the file's code and give a module, not a state dict. `f`: a complete zip, seekable."""
    f.seek(0)
    with zipfile.ZipFile(f) as archive:
        scripted = any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    if scripted:
        raise CheckpointReadError(
            f"{shown!r} is a TorchScript archive (torch.jit.save), not a state dict; save its "
            "weights with torch.save(torch.jit.load(path).state_dict(), 'weights.pth') and pass "
            "that file."
        )


# Key prefixes of a model wrapped in DataParallel / DistributedDataParallel (`module.`) or
# torch.compile (`_orig_mod.`), in either order.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A PyTorch Lightning checkpoint's state dict is its LightningModule's, whose network is mostly
# the attribute `model`; stripped only when every key has it (then it is no network's own name).
_LIGHTNING_PREFIX = "model."


def _strip_wrappers(key: str) -> str:
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


class _Discarded:
    """Stands in for a pickled object saved beside the weights, which is never unpickled.
    Each refused class gets its own subclass, whose `refused` names it for messages."""

    refused = "object"

    def __init__(self, *args: Any, **kwargs: Any):
        del args, kwargs

    def __setstate__(self, state: Any) -> None:
        del state


def _stand_in(name: str) -> type[_Discarded]:
    return type("_Discarded", (_Discarded,), {"refused": name})


# What torch's weights_only unpickler says of a class it refuses.
_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)")
# Refused classes tolerated in one file: a state dict has none, a training state a few (the
# MA-Net release one, with numpy inside it three or four); a whole pickled model has dozens.
_MAX_REFUSED = 20


def _torch_load(torch: Any, f: IO[bytes], shown: str) -> Any:
    """`torch.load(weights_only=True)`, with objects of unknown classes replaced by stand-ins.

    Training scripts save more than weights: the MA-Net authors' script pickles its
    `__main__.RecorderMeter` (training curves, numpy arrays) beside the state dict, which
    `weights_only` refuses and a full unpickle could not even import. No code from the file runs.
    torch lists a zip checkpoint's classes up front (`get_unsafe_globals_in_checkpoint`); a
    legacy one (PyTorch < 1.6, which the MA-Net authors used) is loaded again after each refusal,
    with the refused class added. `f` is an open, seekable binary file (from epath: local or
    remote).
    """
    names: list[str] = []
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if find is not None and zipfile.is_zipfile(f):
        f.seek(0)
        try:
            names = list(find(f))
        except (RuntimeError, ValueError, pickle.UnpicklingError):
            names = []
    while True:
        f.seek(0)
        try:
            with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            refused = _REFUSED.search(str(e))
            if refused is None or refused.group(1) in names:
                raise
            if len(names) >= _MAX_REFUSED:
                raise CheckpointReadError(
                    f"{shown!r} pickles objects of more than {_MAX_REFUSED} classes besides "
                    f"tensors ({', '.join(names[:3])}, ...), a whole model rather than its "
                    "weights; save them with torch.save(model.state_dict(), path)."
                ) from e
            names.append(refused.group(1))


# Entries of a training checkpoint that hold the model's state dict, in the order preferred
# (the EMA copy only without a plain one).
_STATE_DICT_ENTRIES = ("state_dict", "model", "model_state_dict", "model_state", "net", "module",
                       "state_dict_ema", "model_ema")


def _unwrap_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    """The state dict in `obj`: `obj` itself or one of its `_STATE_DICT_ENTRIES`; an error naming
    what the file holds when that has no tensors (an unpickled model, an unknown layout)."""
    if isinstance(obj, _Discarded):
        raise CheckpointReadError(
            f"{path!r} holds a pickled {obj.refused} object (a whole model?), not a state dict; "
            "save the weights with torch.save(model.state_dict(), path)."
        )
    if not isinstance(obj, Mapping):
        raise CheckpointReadError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), path)."
        )
    state = obj
    for key in _STATE_DICT_ENTRIES:
        if key in obj and isinstance(obj[key], Mapping):
            state = obj[key]
            break
    if not any(hasattr(value, "detach") for value in state.values()):
        entries = ", ".join(map(str, list(obj)[:12])) + (", ..." if len(obj) > 12 else "")
        raise CheckpointReadError(
            f"{path!r} holds no state dict (its top-level entries: {entries or 'none'}); save "
            "the model's weights with torch.save(model.state_dict(), path)."
        )
    return state
