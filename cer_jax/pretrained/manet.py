"""The authors' MA-Net checkpoint (PyTorch state dict, MS-Celeb-1M, K = 12,666) -> state paths.

Our module attributes mirror the PyTorch names, so a key converts by renaming its last part and
re-laying out its array; the one exception is CBAM's `mlp`, a PyTorch Sequential(Flatten, Linear,
ReLU, Linear) whose linears `mlp.1` / `mlp.3` are our `mlp/0` / `mlp/1`.
`cer_jax.pretrained.core.assign` then checks every name and shape and writes the arrays.
"""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from cer_jax.pretrained import Converted
from cer_jax.pretrained.core import WeightImportError

# PyTorch parameter / buffer name -> NNX variable name (conv and linear weights: `kernel`).
_LEAF_NAMES = {"bias": "bias", "running_mean": "mean", "running_var": "var"}
_MLP_INDEX = {"1": "0", "3": "1"}
# Modules only MA-Net has (a ResNet file shares its conv1 / bn1 / layer1 names).
MANET_MODULES = ("layer3_1_p", "layer4_1_p", "layer3_2.", "layer4_2.")


def state_path(key: str, ndim: int) -> str:
    """`layer3_1_p1.0.cbam.ChannelGate.mlp.1.weight` -> `.../cbam/ChannelGate/mlp/0/kernel`."""
    *modules, leaf = key.split(".")
    if leaf == "weight":
        leaf = "scale" if ndim == 1 else "kernel"  # BN weight vs conv / linear weight
    elif leaf in _LEAF_NAMES:
        leaf = _LEAF_NAMES[leaf]
    else:
        raise WeightImportError(
            f"Unknown tensor {key!r} in the MA-Net checkpoint: expected weight, bias, "
            "running_mean, running_var or num_batches_tracked. Is this the authors' MA-Net file?"
        )
    path = "/".join(modules)
    path = re.sub(r"(?<=ChannelGate/mlp/)(\d+)$", lambda m: _MLP_INDEX.get(m[1], m[1]), path)
    return f"{path}/{leaf}"


def to_flax_layout(value: np.ndarray) -> np.ndarray:
    """PyTorch conv O,I,H,W -> H,W,I,O; Linear out,in -> in,out; vectors unchanged."""
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return np.transpose(value)
    return value


def convert(checkpoint: dict[str, np.ndarray], model: nnx.Module) -> Converted:
    """Renames and re-lays-out every tensor; BN step counters are reported as unused. The
    mapping is by name alone; `core.assign` checks it against the model."""
    if not any(key.startswith(MANET_MODULES) for key in checkpoint):
        raise WeightImportError(
            "Not an MA-Net checkpoint (expected the authors' names, e.g. "
            "'layer3_1_p1.0.cbam.ChannelGate.mlp.1.weight'); its first keys are: "
            + ", ".join(sorted(checkpoint)[:8])
            + ": give the authors' MS-Celeb-1M .pth.tar (README, 'Bring pre-trained weights'), "
            "or unset init.checkpoint to train MA-Net from scratch."
        )
    arrays: dict[str, np.ndarray] = {}
    unused: list[str] = []
    for key, value in checkpoint.items():
        if key.endswith("num_batches_tracked"):
            unused.append(key)
            continue
        value = np.asarray(value)
        arrays[state_path(key, value.ndim)] = to_flax_layout(value)
    stem = arrays.get("conv1/kernel")
    width = model.conv1.out_features
    if stem is not None and np.ndim(stem) == 4 and stem.shape[-1] != width:
        # Every tensor would differ: one line with the fix (the smoke config's width is 16).
        raise WeightImportError(
            f"the checkpoint holds an MA-Net of width {stem.shape[-1]} (conv1 has "
            f"{stem.shape[-1]} filters), and config.model.width={width}: set "
            f"--config.model.width={stem.shape[-1]}."
        )
    return Converted(arrays=arrays, unused=unused)
