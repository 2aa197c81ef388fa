"""What a pre-trained file implies about model settings that change the computed function but no
tensor shape, so that a checkpoint is run as the network it was trained in.

- ViT, big_vision / AugReg `.npz`: `gelu_approximate=True` and `layer_norm_eps=1e-6`. Both
  big_vision (`big_vision/models/vit.py`, `MlpBlock`: `nn.gelu(x)`; `nn.LayerNorm()`) and
  vision_transformer (`vit_jax/models_vit.py`, same calls) use flax's defaults: `nn.gelu` is
  `jax.nn.gelu(x, approximate=True)`, the tanh approximation, and `nn.LayerNorm` has
  `epsilon=1e-6`.
- ViT, Hugging Face (`vit.embeddings...` names): `hidden_act` and `layer_norm_eps` of the
  `config.json` beside the weights (what `save_pretrained` and the Hub give); without one,
  transformers' documented `ViTConfig` defaults, `hidden_act="gelu"` (exact) and 1e-12.
  `gelu` / `gelu_python` are the exact GELU; `gelu_new`, `gelu_pytorch_tanh`,
  `gelu_python_tanh`, `gelu_fast`, `gelu_accurate` the tanh approximation; anything else is an
  activation this ViT does not compute, an error.
- ViT, timm `vit_*`: the exact GELU (`nn.GELU`) and LayerNorm epsilon 1e-6 (timm's
  `partial(nn.LayerNorm, eps=1e-6)`).
- MA-Net, the authors' `.pth.tar`: `path_b_order` of the code version that trained the weights
  (config key `init.manet_code_version`): "2021" (the published MS-Celeb-1M weights) runs the
  multi-scale path B forward, "2023" in reverse. The tensor names are the same for both.
- ResNet: nothing. A Hugging Face ResNet `config.json` that describes another network with the
  same shapes (a non-ReLU activation, ResNet v1's stride on the 1x1 conv) is an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from etils import epath

from cer_jax.pretrained.core import WeightImportError
from cer_jax.pretrained.readers import CheckpointReadError, weights_file_name


@dataclasses.dataclass(frozen=True)
class Setting:
    """A model config value implied by a pre-trained file, and why (for logs and errors)."""

    value: Any
    reason: str


# init.manet_code_version -> model.path_b_order
MANET_CODE_VERSIONS = {"2021": "forward", "2023": "reverse"}

_HF_EXACT = ("gelu", "gelu_python")
_HF_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate")
# transformers' documented ViTConfig defaults.
HF_VIT_DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12}

_NPZ = "big_vision / AugReg .npz (flax nn.gelu and nn.LayerNorm defaults, as in big_vision's ViT)"
_TIMM = "timm vit_* weights (timm's ViT: nn.GELU, LayerNorm eps=1e-6)"


def manet_path_b_order(manet_code_version: str) -> str:
    """'2021' -> 'forward', '2023' -> 'reverse'; otherwise an error naming the config key."""
    version = str(manet_code_version)
    if version not in MANET_CODE_VERSIONS:
        raise WeightImportError(
            f"Unknown MA-Net code version {manet_code_version!r} (config key "
            "init.manet_code_version): use '2021' for the authors' published MS-Celeb-1M weights "
            "(path B in forward order) or '2023' for weights trained with the current code "
            "(reverse order)."
        )
    return MANET_CODE_VERSIONS[version]


@contextlib.contextmanager
def naming_the_file(path: str | os.PathLike[str] | epath.Path) -> Iterator[None]:
    """Prefixes `path` to a WeightImportError raised inside (a converter's, which sees tensors,
    not files), unless its message names it already."""
    try:
        yield
    except WeightImportError as e:
        shown = os.fspath(path)
        if shown in str(e):
            raise
        raise WeightImportError(f"{shown}: {e}") from e


def settings_for_keys(
    model_name: str,
    keys: Iterable[str],
    path: str | os.PathLike[str] | epath.Path,
    *,
    manet_code_version: str = "2021",
) -> dict[str, Setting]:
    """`implied_settings` for a file whose tensor names are `keys` (already read); `path` (local
    or remote, read through epath) locates a Hugging Face config.json beside it."""
    if model_name == "manet":
        order = manet_path_b_order(manet_code_version)
        return {"path_b_order": Setting(
            order, f"MA-Net weights trained with the {manet_code_version} code "
                   f"(init.manet_code_version={str(manet_code_version)!r}) run path B {order}")}
    if model_name == "vit":
        from cer_jax.pretrained import vit

        with naming_the_file(path):
            fmt = vit.detect_format(keys)
        if fmt == "npz":
            return {"gelu_approximate": Setting(True, _NPZ), "layer_norm_eps": Setting(1e-6, _NPZ)}
        if fmt == "timm":
            return {"gelu_approximate": Setting(False, _TIMM),
                    "layer_norm_eps": Setting(1e-6, _TIMM)}
        return _hf_vit(path)
    if model_name == "resnet":
        from cer_jax.pretrained import resnet

        with naming_the_file(path):
            fmt = resnet.detect_format(keys)
        if fmt == "hf":
            _check_hf_resnet(path)
        return {}
    return {}


def _hf_config(
    path: str | os.PathLike[str] | epath.Path, name: str = "config.json",
) -> tuple[dict[str, Any] | None, str]:
    """The Hugging Face config.json (or other JSON file `name`) beside the weights at `path`, or
    in the folder `path` (None if absent), and its path as a string for messages. Read through
    epath: `path` may be remote (gs://...)."""
    weights = epath.Path(path).expanduser()
    if not weights.is_absolute():  # a relative local path: name the config by its full path
        weights = weights.resolve()
    # A folder stands for the weights file in it (readers._weights_in_directory).
    config_file = (weights if weights.is_dir() else weights.parent) / name
    config_path = os.fspath(config_file)
    if not config_file.is_file():
        return None, config_path
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointReadError(
            f"Cannot read {config_path!r} beside {os.fspath(path)!r}: {e}"
        ) from e
    if not isinstance(config, dict):
        raise CheckpointReadError(f"{config_path!r} is not a JSON object.")
    return config, config_path


def _hf_vit(path: str | os.PathLike[str] | epath.Path) -> dict[str, Setting]:
    config, config_path = _hf_config(path)
    if config is None:
        where = (f"Hugging Face ViT weights without a config.json beside them ({config_path} is "
                 "absent): transformers' ViTConfig default")
        config = {}
    else:
        where = f"Hugging Face ViT, {config_path}"
    act = config.get("hidden_act", HF_VIT_DEFAULTS["hidden_act"])
    eps = config.get("layer_norm_eps", HF_VIT_DEFAULTS["layer_norm_eps"])
    if act in _HF_EXACT:
        approximate = False
    elif act in _HF_TANH:
        approximate = True
    else:
        raise WeightImportError(
            f"{config_path} sets hidden_act={act!r}; cer_jax's ViT computes only the exact GELU "
            f"({', '.join(_HF_EXACT)}) or its tanh approximation ({', '.join(_HF_TANH)})."
        )
    try:
        eps = float(eps)
    except (TypeError, ValueError) as e:
        raise CheckpointReadError(f"{config_path}: layer_norm_eps={eps!r} is not a number") from e
    return {
        "gelu_approximate": Setting(approximate, f"{where} hidden_act={act!r}"),
        "layer_norm_eps": Setting(eps, f"{where} layer_norm_eps={eps:g}"),
    }


def _check_hf_resnet(path: str | os.PathLike[str] | epath.Path) -> None:
    config, config_path = _hf_config(path)
    if config is None:
        return
    problems = []
    if config.get("hidden_act", "relu") != "relu":
        problems.append(f"hidden_act={config['hidden_act']!r} (this ResNet uses ReLU)")
    if config.get("downsample_in_bottleneck", False):
        problems.append("downsample_in_bottleneck=true (ResNet v1, stride on the 1x1 conv; this "
                        "ResNet is v1.5, stride on the 3x3 conv)")
    if config.get("downsample_in_first_stage", False):
        problems.append("downsample_in_first_stage=true (this ResNet keeps stage 1 at stride 1)")
    if problems:
        raise WeightImportError(
            f"{config_path} describes another network than cer_jax's ResNet, with the same tensor "
            "shapes: " + "; ".join(problems)
        )


def input_statistics(
    model_name: str, path: str | os.PathLike[str] | epath.Path,
) -> Setting | None:
    """The (mean, std) per RGB channel, on [0, 1] images, that the network in the file at `path`
    was pre-trained with, where the format or a file beside it says so; else None.

    - ViT `.npz` (big_vision / AugReg): [-1, 1] inputs, mean 0.5 and std 0.5;
    - the authors' MA-Net file: [0, 1] inputs without mean/std (manet.md);
    - Hugging Face: `image_mean` / `image_std` of the `preprocessor_config.json` beside the
      weights (mean 0 and std 1 where it sets do_normalize=false);
    - timm: `mean` / `std` of the `pretrained_cfg` in the `config.json` beside the weights.
    """
    if model_name == "manet":
        return Setting(((0.0,) * 3, (1.0,) * 3),
                       "the authors' MA-Net weights were trained on [0, 1] inputs")
    if model_name == "vit" and weights_file_name(path).lower().endswith(".npz"):  # folder too
        return Setting(((0.5,) * 3, (0.5,) * 3),
                       "big_vision / AugReg ViTs are pre-trained on [-1, 1] inputs")
    try:  # files that only inform a warning: an unreadable one says nothing
        processor, where = _hf_config(path, "preprocessor_config.json")
        config, config_where = _hf_config(path)
    except CheckpointReadError:
        return None
    if processor is not None and "image_mean" in processor:
        if not processor.get("do_normalize", True):
            return Setting(((0.0,) * 3, (1.0,) * 3), f"{where} sets do_normalize=false")
        stats = _rgb(processor.get("image_mean"), processor.get("image_std"))
        return stats and Setting(stats, f"{where} sets image_mean/image_std")
    pretrained_cfg = (config or {}).get("pretrained_cfg")
    if isinstance(pretrained_cfg, dict):
        stats = _rgb(pretrained_cfg.get("mean"), pretrained_cfg.get("std"))
        return stats and Setting(stats, f"timm's {config_where} sets pretrained_cfg mean/std")
    return None


def head_class_names(path: str | os.PathLike[str] | epath.Path) -> list[str] | None:
    """The classes of the head in the file at `path`, by output index, where a Hugging Face
    config.json beside it names them (`id2label`; a FER model from the Hub, say); None where
    nothing does (or only transformers' placeholders LABEL_0, LABEL_1, ...)."""
    try:
        config, _ = _hf_config(path)
    except CheckpointReadError:
        return None
    labels = (config or {}).get("id2label")
    if not isinstance(labels, dict) or not labels:
        return None
    try:
        names = [str(labels[key]) for key in sorted(labels, key=int)]
    except (TypeError, ValueError):
        return None
    if all(re.fullmatch(r"LABEL_\d+", name) for name in names):
        return None
    return names


def _rgb(mean: Any, std: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) as three floats each (one number stands for all three), or None."""
    if mean is None or std is None:
        return None
    try:
        values = [np.broadcast_to(np.asarray(v, np.float64), (3,)) for v in (mean, std)]
    except (TypeError, ValueError):
        return None
    return tuple(values[0].tolist()), tuple(values[1].tolist())


def model_settings(model: Any, model_name: str) -> dict[str, Any]:
    """The values a built model actually uses for the settings a file can imply."""
    if model_name == "vit":
        return {"gelu_approximate": bool(model.blocks[0].mlp.gelu_approximate),
                "layer_norm_eps": float(model.encoder_norm.epsilon)}
    if model_name == "manet":
        return {"path_b_order": model.layer3_2[0].path_b_order}
    return {}
