"""ResNet checkpoints -> `cer_jax.models.resnet.ResNet` state paths.

Two namings, told apart by their keys:
- torchvision / timm `resnet*` state dicts (`conv1`, `bn1`, `layer{1..4}.{j}.conv{k}`, `bn{k}`,
  `downsample.{0,1}`, `fc`), from `.pth` or safetensors;
- Hugging Face `ResNetForImageClassification` safetensors, e.g. `microsoft/resnet-50`
  (`resnet.embedder.embedder.*`, `resnet.encoder.stages.{s}.layers.{l}.{shortcut,layer.{k}}`,
  `classifier.1`).
Layouts: conv O,I,H,W -> H,W,I,O; Linear (out, in) -> (in, out); BatchNorm weight/bias ->
scale/bias and running_mean/var -> the batch statistics mean/var. `num_batches_tracked` is the
only tensor dropped (reported as unused); any other unknown tensor is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import numpy as np

from cer_jax.models.resnet import BOTTLENECK_DEPTHS, STAGE_SIZES
from cer_jax.pretrained import Converted
from cer_jax.pretrained.core import WeightImportError
from cer_jax.pretrained.manet import MANET_MODULES

_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_HARMLESS = "num_batches_tracked"


def detect_format(keys: Iterable[str]) -> Literal["torchvision", "hf"]:
    """'torchvision' (torchvision / timm names) or 'hf' (Hugging Face), from tensor names."""
    keys = set(keys)
    if any(k.startswith("resnet.embedder.") or k.startswith("embedder.") for k in keys):
        return "hf"
    if "conv1.weight" in keys:
        return "torchvision"
    raise WeightImportError(
        "Not a ResNet checkpoint this importer knows (expected torchvision / timm names like "
        "'conv1.weight', 'layer1.0.conv1.weight' or Hugging Face 'resnet.embedder...'); its "
        "first keys are: " + ", ".join(sorted(keys)[:8])
    )


def convert(checkpoint: dict[str, np.ndarray], model) -> Converted:
    """Renames / re-lays-out `checkpoint` (torchvision, timm or Hugging Face) for `model`; names
    map one to one, and core.assign checks them against the model."""
    if detect_format(checkpoint) == "hf":
        rename, fmt = _hf_name, "Hugging Face"
    else:
        rename, fmt = _torchvision_name, "torchvision / timm"
    arrays: dict[str, np.ndarray] = {}
    unused: list[str] = []
    unknown: list[str] = []
    for key, value in checkpoint.items():
        if key.endswith(_HARMLESS):
            unused.append(key)
            continue
        name = rename(key)
        if name is None:
            unknown.append(key)
            continue
        arrays[name] = _layout(name.rsplit("/", 1)[1], value)
    manet = sorted(key for key in unknown if key.startswith(MANET_MODULES))
    if manet:  # MA-Net's trunk has ResNet's names (conv1, bn1, layer1/2): say what the file is
        raise WeightImportError(
            f"the checkpoint holds MA-Net weights (the authors' names: {', '.join(manet[:2])}, "
            "...), not a ResNet: give a torchvision / timm / Hugging Face ResNet file here, and "
            "this one to the MA-Net member (config.model.name='manet')."
        )
    if unknown:
        raise WeightImportError(
            f"{fmt} ResNet checkpoint has tensors this importer does not understand (a different "
            "architecture?): " + ", ".join(sorted(unknown)[:20])
        )
    _check_size(arrays, model)
    return Converted(arrays=arrays, unused=unused)


def _size(stages: list[int], bottleneck: bool, width: int) -> tuple[int | None, str]:
    """The depth of a ResNet of these stage sizes and block type, if cer_jax builds one, and the
    network in words."""
    depths = [d for d, sizes in STAGE_SIZES.items()
              if list(sizes) == stages and (d in BOTTLENECK_DEPTHS) == bottleneck]
    if depths:
        return depths[0], f"ResNet-{depths[0]} (width {width})"
    kind = "bottleneck" if bottleneck else "basic"
    return None, f"ResNet of {kind} blocks {stages} (width {width})"


def _check_size(arrays: dict[str, np.ndarray], model) -> None:
    """A checkpoint of another depth or width (ResNet-101 or -18 into the ResNet-50 config) is
    one line naming the config keys to set, not a list of every tensor that differs."""
    kernel = arrays.get("conv1/kernel")
    if kernel is None or np.ndim(kernel) != 4:
        return  # an incomplete file: assign names what is missing
    stages = [len({k.split("/")[1] for k in arrays if k.startswith(f"layer{s}/")})
              for s in range(1, 5)]
    found = (stages, "layer1/0/conv3/kernel" in arrays, int(kernel.shape[-1]))
    layers = [getattr(model, f"layer{s}") for s in range(1, 5)]
    wanted = ([len(layer) for layer in layers], hasattr(layers[0][0], "conv3"),
              model.conv1.out_features)
    depth, described = _size(*found)
    if found == wanted or depth is None:
        return  # of no size cer_jax builds: assign lists the tensors that differ
    fix = [f"--config.model.{key}={value}" for key, value, other in
           (("depth", depth, _size(*wanted)[0]), ("width", found[2], wanted[2]))
           if value != other]
    raise WeightImportError(
        f"the checkpoint holds a {described}, and config.model builds a {_size(*wanted)[1]}: "
        f"set {' '.join(fix)}."
    )


def _layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # conv O,I,H,W -> H,W,I,O
    if leaf == "kernel" and value.ndim == 2:
        return value.T  # Linear (out, in) -> (in, out)
    return value


def _leaf(module: str, torch_leaf: str, is_bn: bool) -> str | None:
    if is_bn:
        leaf = _BN_LEAVES.get(torch_leaf)
    else:
        leaf = {"weight": "kernel", "bias": "bias"}.get(torch_leaf)
    return None if leaf is None else f"{module}/{leaf}"


def _torchvision_name(key: str) -> str | None:
    """'layer2.0.downsample.1.running_var' -> 'layer2/0/downsample_bn/var'."""
    m = re.fullmatch(r"(conv1|bn1|fc)\.(\w+)", key)
    if m:
        module = "head" if m.group(1) == "fc" else m.group(1)
        return _leaf(module, m.group(2), m.group(1) == "bn1")
    m = re.fullmatch(r"(layer[1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(\w+)", key)
    if m:
        part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(
            m.group(3), m.group(3)
        )
        return _leaf(f"{m.group(1)}/{m.group(2)}/{part}", m.group(4), "bn" in part)
    return None


def _hf_name(key: str) -> str | None:
    """'resnet.encoder.stages.1.layers.0.layer.2.normalization.weight' -> 'layer2/0/bn3/scale'."""
    key = key.removeprefix("resnet.")
    m = re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(\w+)", key)
    if m:
        is_bn = m.group(1) == "normalization"
        return _leaf("bn1" if is_bn else "conv1", m.group(2), is_bn)
    m = re.fullmatch(
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.(shortcut|layer\.(\d))\."
        r"(convolution|normalization)\.(\w+)",
        key,
    )
    if m:
        stage, block, conv_index = int(m.group(1)), m.group(2), m.group(4)
        is_bn = m.group(5) == "normalization"
        if conv_index is None:
            part = "downsample_bn" if is_bn else "downsample_conv"
        else:
            part = f"{'bn' if is_bn else 'conv'}{int(conv_index) + 1}"
        return _leaf(f"layer{stage + 1}/{block}/{part}", m.group(6), is_bn)
    m = re.fullmatch(r"classifier\.1\.(weight|bias)", key)
    if m:
        return _leaf("head", m.group(1), False)
    return None
