"""Read checkpoint files into flat {name: float32 numpy array} dicts.

Every file is opened through etils epath, so a path may be local or remote (gs://...); nothing
is downloaded from a model hub. PyTorch is imported only to unpickle `.pth` / `.pth.tar` / `.bin`
files (and for bfloat16 safetensors); `.npz` and `.safetensors` need no PyTorch.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import IO, Any

import numpy as np
from etils import epath
from safetensors import SafetensorError

from cer_jax.errors import UserError

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin", ".tar", ".ckpt")


class CheckpointReadError(UserError):
    """A checkpoint file that is missing, of an unknown kind, or cannot be parsed."""


def read_checkpoint(path: str | os.PathLike[str] | epath.Path) -> dict[str, np.ndarray]:
    """Returns every array in the file at `path`, keyed by its name in that file.

    `.npz` keys keep their '/'-joined names; a big_vision training checkpoint is unwrapped as
    big_vision's own `utils.load_params` does (the `params/...` subtree, else `opt/target/...`;
    the optimizer state beside it is not read). PyTorch state dicts lose a DataParallel `module.`
    prefix and are unwrapped from a `state_dict` / `model` entry when the file holds a dict of
    training state (the MA-Net release does).
    """
    return _dispatch(path, keys_only=False)


def checkpoint_keys(path: str | os.PathLike[str] | epath.Path) -> list[str]:
    """The names `read_checkpoint` would return, cheaply where the format allows it: `.npz` and
    safetensors read their index only; a PyTorch pickle has to be loaded."""
    return _dispatch(path, keys_only=True)


def _dispatch(path: str | os.PathLike[str] | epath.Path, *, keys_only: bool) -> Any:
    shown = os.fspath(path)  # for messages: what the user passed ('gs://...' stays so)
    file = epath.Path(path).expanduser()
    if not file.is_file():
        raise CheckpointReadError(
            f"Pre-trained checkpoint {shown!r} does not exist. Download it yourself (see README, "
            "'Pre-trained weights') and set config.init.checkpoint to its path (local or gs://)."
        )
    name = file.name.lower()
    try:
        if name.endswith(".npz"):
            with file.open("rb") as f:
                if f.read(2) != b"PK":  # else np.load's message is about pickles
                    raise CheckpointReadError(
                        f"Cannot read checkpoint {shown!r}: not a .npz file (the zip archive "
                        "of arrays that numpy.savez writes).")
                f.seek(0)
                with np.load(f, allow_pickle=False) as data:
                    selected = _npz_params(data.files, shown)
                    if keys_only:
                        return list(selected)
                    return {k: _as_float_array(data[key]) for k, key in selected.items()}
        if name.endswith(".safetensors"):
            if keys_only:
                with file.open("rb") as f:
                    return _safetensors_keys(f, shown)
            return _read_safetensors(file, shown)
        if name.endswith(TORCH_SUFFIXES):
            state = _read_torch(file, shown)
            return list(state) if keys_only else state
    except CheckpointReadError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, RuntimeError, KeyError,
            pickle.UnpicklingError, SafetensorError) as e:
        raise CheckpointReadError(f"Cannot read checkpoint {shown!r}: {e}") from e
    raise CheckpointReadError(
        f"Unknown checkpoint format for {shown!r}: expected .npz (big_vision / AugReg), "
        f".safetensors (Hugging Face / timm) or a PyTorch file ({', '.join(TORCH_SUFFIXES)})."
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
        # Every array here is a fresh one of its own: float32 ones need no copy.
        return array.astype(np.float32, copy=False)
    return array


# safetensors' own limit on the JSON header (a larger one is not a safetensors file).
_SAFETENSORS_MAX_HEADER = 100_000_000


def _safetensors_keys(f: IO[bytes], shown: str) -> list[str]:
    """The tensor names in a safetensors file, from its header alone: an 8-byte little-endian
    length, then that many bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__":
    {...}}. Sorted, as safetensors' `safe_open(...).keys()` gives them."""
    prefix = f.read(8)
    size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if not 0 < size <= _SAFETENSORS_MAX_HEADER:
        raise CheckpointReadError(f"Cannot read checkpoint {shown!r}: not a safetensors file.")
    try:
        header = json.loads(f.read(size))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointReadError(
            f"Cannot read checkpoint {shown!r}: not a safetensors file ({e})."
        ) from e
    if not isinstance(header, dict):
        raise CheckpointReadError(f"Cannot read checkpoint {shown!r}: not a safetensors file.")
    return sorted(key for key in header if key != "__metadata__")


def _read_safetensors(file: epath.Path, shown: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    data = file.read_bytes()
    try:
        return {key: _as_float_array(value) for key, value in load(data).items()}
    except (KeyError, TypeError) as e:  # bfloat16 tensors have no numpy dtype: go through PyTorch.
        try:
            from safetensors.torch import load as load_torch
        except ImportError:
            raise CheckpointReadError(
                f"{shown!r} stores bfloat16 tensors, which need PyTorch to read: "
                "pip install torch, or save the file in float32."
            ) from e
        return {k: v.float().numpy() for k, v in load_torch(data).items()}


def _read_torch(file: epath.Path, shown: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise CheckpointReadError(
            f"{shown!r} is a PyTorch pickle; reading it needs PyTorch (pip install torch). "
            "Or convert it to .safetensors first."
        ) from e
    with file.open("rb") as f:
        obj = _torch_load(torch, f)
    state = _unwrap_state_dict(obj, shown)
    out = {}
    for key, value in state.items():
        if isinstance(value, _Discarded):
            raise CheckpointReadError(
                f"{shown!r}: state-dict entry {key!r} is a pickled object of a class PyTorch does "
                "not know, not a tensor; re-save the weights with torch.save(model.state_dict())."
            )
        if not hasattr(value, "detach"):
            continue  # num_batches_tracked-style scalars are tensors; other entries are metadata
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        out[key.removeprefix("module.")] = tensor.numpy()
    return out


class _Discarded:
    """Stands in for a pickled object saved beside the weights, which is never unpickled."""

    def __init__(self, *args: Any, **kwargs: Any):
        del args, kwargs

    def __setstate__(self, state: Any) -> None:
        del state


def _torch_load(torch: Any, f: IO[bytes]) -> Any:
    """`torch.load(weights_only=True)`, with objects of unknown classes replaced by stand-ins.

    Training scripts save more than weights: the MA-Net authors' script pickles its
    `__main__.RecorderMeter` (training curves, numpy arrays) beside the state dict, which
    `weights_only` refuses and a full unpickle could not even import. No code from the file runs.
    `f` is an open, seekable binary file (from epath: local or remote); it is read from the start
    up to three times.
    """
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # >= 2.6
        if find is None:
            raise
        f.seek(0)
        names = find(f)
        if not names:
            raise
    f.seek(0)
    with torch.serialization.safe_globals([(_Discarded, name) for name in names]):
        return torch.load(f, map_location="cpu", weights_only=True)


def _unwrap_state_dict(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointReadError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict; save model.state_dict()."
        )
    for key in ("state_dict", "model", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj
