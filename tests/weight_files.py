"""Pre-trained weight files in every format users bring, written from a cer_jax model's weights
through each format's own library / layout (independently of `cer_jax.pretrained`'s code).

Registries: format name -> writer `fn(model, directory) -> pathlib.Path` (the file to pass as
`--config.init.checkpoint`; `directory` is created if needed and should be empty):

    VIT_FORMATS     "augreg_npz"                vision_transformer / AugReg .npz (np.savez)
                    "big_vision_npz"            big_vision flat .npz
                    "big_vision_scan_npz"       big_vision scan=True .npz (stacked encoderblock)
                    "big_vision_params_npz"     big_vision training checkpoint, `params/` prefix
                                                (and optax state under `opt/`)
                    "big_vision_opt_target_npz" old flax.optim checkpoint, `opt/target/` prefix
                    "hf_safetensors"            transformers ViTForImageClassification
                                                save_pretrained (model.safetensors + config.json)
                    "timm_safetensors"          timm vit_* names (fused qkv), safetensors
    RESNET_FORMATS  "torchvision_pth"           torchvision state dict, torch.save
                    "timm_safetensors"          timm resnet names (= torchvision's), safetensors
                    "hf_safetensors"            transformers ResNetForImageClassification
                                                save_pretrained
    MANET_FORMATS   "authors_pth_tar_2021"      the authors' .pth.tar (torch.save of a training
                    "authors_pth_tar_2023"      state: epoch, state_dict with `module.` names,
                                                optimizer, a pickled recorder); MANET_CODE_VERSIONS
                                                gives the version to pass as init.manet_code_version
                    (write_manet(..., legacy=True): the same in PyTorch < 1.6's non-zip format)

Loading a written file with `load_pretrained(fresh_model, name, path, keep_head=True)` gives back
the model's arrays exactly (float32), with two documented exceptions: the big_vision layouts fold
the class token's position entry into `cls` (as big_vision's `fix_old_checkpoints` does, so the
computed function is the same but `cls` / `pos_embedding[:, 0]` differ), and MA-Net files carry
the MS-Celeb-1M 12,666-way heads of the real file.

The model is any ViT (`pool="cls"`, no pre-logits), ResNet or MA-Net from `create_model`, at any
size: e.g. ViT "test/8" or "mu/16" at 32-64 px, ResNet depth 50 width 8-16, MA-Net width 8-16.
`randomise(model, seed)` fills one with non-trivial values (BatchNorm statistics, LayerNorm
scales, zero-initialised heads); the settings a file implies match the model's own for the Hugging
Face writers (config.json from the model), are tanh GELU / 1e-6 for the .npz writers and exact
GELU / 1e-6 for timm.

    model = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=32)
    path = VIT_FORMATS["augreg_npz"](model, tmp_path / "augreg")
"""

from __future__ import annotations

import pathlib
import re
import tempfile
from collections.abc import Callable

import numpy as np
import torch
from flax import nnx
from safetensors.numpy import save_file

from cer_jax.pretrained.core import model_arrays

MS_CELEB_CLASSES = 12_666
Writer = Callable[..., pathlib.Path]


# ---------------------------------------------------------------------------------------------
# Random weights.


def randomise(model: nnx.Module, seed: int = 0, scale: float = 0.1) -> nnx.Module:
    """In place: BatchNorm statistics and norm scales drawn at random, every other array moved
    by `scale` * N(0, 1) from its initial value. An `nnx.eval_shape` model (no values, no
    compiled initialisers: much faster on CPU) gets LeCun-normal kernels and N(0, scale) else."""
    rng = np.random.default_rng(seed)
    for name, var in model_arrays(model).items():
        value = var.get_value()
        shape = tuple(value.shape)
        if name.endswith("/var"):
            new = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("/mean"):
            new = rng.normal(0.0, 0.2, shape)
        elif name.endswith("/scale"):
            new = rng.uniform(0.5, 1.5, shape)
        elif hasattr(value, "__array__"):
            new = np.asarray(value) + rng.normal(0.0, scale, shape)
        elif name.endswith("/kernel") and len(shape) >= 2:  # abstract: LeCun-normal scale
            new = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), shape)
        else:
            new = rng.normal(0.0, scale, shape)
        var.set_value(np.asarray(new, np.float32))
    return model


def arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.get_value()) for k, v in model_arrays(model).items()}


def _directory(directory) -> pathlib.Path:
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# ---------------------------------------------------------------------------------------------
# ViT: cer_jax -> Hugging Face (through transformers) -> AugReg / big_vision / timm.


def vit_hf_config(model, **overrides):
    """The transformers ViTConfig of `model`'s geometry and settings."""
    from transformers import ViTConfig

    if model.pool != "cls" or model.pre_logits is not None:
        raise ValueError("ViT weight files are written for pool='cls' without pre-logits.")
    block = model.blocks[0]
    config = dict(
        hidden_size=model.embedding.out_features, num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads, intermediate_size=block.mlp.fc1.out_features,
        patch_size=model.patch_size, image_size=model.image_size,
        num_labels=model.head.out_features, layer_norm_eps=model.encoder_norm.epsilon,
        hidden_act="gelu_pytorch_tanh" if block.mlp.gelu_approximate else "gelu",
    )
    return ViTConfig(**{**config, **overrides})


def vit_hub_state(model) -> dict[str, np.ndarray]:
    """`model`'s arrays under the Hugging Face Hub names and PyTorch layouts."""
    a = arrays(model)
    width = a["cls"].shape[-1]
    state = {
        "vit.embeddings.cls_token": a["cls"],
        "vit.embeddings.position_embeddings": a["pos_embedding"],
        "vit.embeddings.patch_embeddings.projection.weight": a["embedding/kernel"]
        .transpose(3, 2, 0, 1),
        "vit.embeddings.patch_embeddings.projection.bias": a["embedding/bias"],
        "vit.layernorm.weight": a["encoder_norm/scale"],
        "vit.layernorm.bias": a["encoder_norm/bias"],
        "classifier.weight": a["head/kernel"].T,
        "classifier.bias": a["head/bias"],
    }
    for i in range(len(model.blocks)):
        b, p = f"blocks/{i}/", f"vit.encoder.layer.{i}."
        for q in ("query", "key", "value"):
            state[p + f"attention.attention.{q}.weight"] = a[b + f"attn/{q}/kernel"].reshape(
                width, width).T
            state[p + f"attention.attention.{q}.bias"] = a[b + f"attn/{q}/bias"].reshape(width)
        state[p + "attention.output.dense.weight"] = a[b + "attn/out/kernel"].reshape(
            width, width).T
        state[p + "attention.output.dense.bias"] = a[b + "attn/out/bias"]
        for hf, ours in (("intermediate.dense", "mlp/fc1"), ("output.dense", "mlp/fc2")):
            state[p + f"{hf}.weight"] = a[b + f"{ours}/kernel"].T
            state[p + f"{hf}.bias"] = a[b + f"{ours}/bias"]
        for hf, ours in (("layernorm_before", "norm1"), ("layernorm_after", "norm2")):
            state[p + f"{hf}.weight"] = a[b + f"{ours}/scale"]
            state[p + f"{hf}.bias"] = a[b + f"{ours}/bias"]
    return {k: np.array(v, np.float32, order="C") for k, v in state.items()}


def _from_hub_files(cls, config, state: dict[str, np.ndarray]):
    """A transformers model loaded by its own `from_pretrained` from Hub-named tensors."""
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        save_file(state, f"{tmp}/model.safetensors", metadata={"format": "pt"})
        model, info = cls.from_pretrained(tmp, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not problems, f"transformers did not load every tensor: {problems}"
    return model.eval()


def vit_hf_reference(model, **config_overrides):
    """A transformers ViTForImageClassification computing what `model` does (its weights)."""
    from transformers import ViTForImageClassification

    return _from_hub_files(ViTForImageClassification, vit_hf_config(model, **config_overrides),
                           vit_hub_state(model))


def write_hf_vit(model, directory, **config_overrides) -> pathlib.Path:
    """`save_pretrained` of the transformers reference: model.safetensors + config.json."""
    directory = _directory(directory)
    vit_hf_reference(model, **config_overrides).save_pretrained(directory)
    return directory / "model.safetensors"


def _hf_block(state, i):
    p = f"vit.encoder.layer.{i}."
    return {name: state[p + name] for name in [
        f"attention.attention.{q}.{leaf}" for q in ("query", "key", "value")
        for leaf in ("weight", "bias")
    ] + [
        f"{m}.{leaf}" for m in ("attention.output.dense", "intermediate.dense", "output.dense",
                                "layernorm_before", "layernorm_after")
        for leaf in ("weight", "bias")
    ]}


def _depth(state) -> int:
    return 1 + max(int(m[1]) for k in state if (m := re.match(r"vit\.encoder\.layer\.(\d+)\.", k)))


def to_augreg_npz(state, heads: int, big_vision: bool = False) -> dict:
    """Hugging Face names/layouts -> vision_transformer (AugReg) or big_vision .npz names/layouts.
    big_vision adds no position embedding to the class token: its entry is folded into `cls`."""
    width = state["vit.embeddings.cls_token"].shape[-1]
    attn = "MultiHeadDotProductAttention_0" if big_vision else "MultiHeadDotProductAttention_1"
    ln2, mlp = ("LayerNorm_1", "MlpBlock_0") if big_vision else ("LayerNorm_2", "MlpBlock_3")
    posemb = state["vit.embeddings.position_embeddings"]
    out = {
        "cls": state["vit.embeddings.cls_token"],
        "embedding/kernel": state["vit.embeddings.patch_embeddings.projection.weight"]
        .transpose(2, 3, 1, 0),
        "embedding/bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "Transformer/encoder_norm/scale": state["vit.layernorm.weight"],
        "Transformer/encoder_norm/bias": state["vit.layernorm.bias"],
        "head/kernel": state["classifier.weight"].T,
        "head/bias": state["classifier.bias"],
    }
    if big_vision:
        out["cls"] = out["cls"] + posemb[:, :1]
        out["pos_embedding"] = posemb[:, 1:]
    else:
        out["Transformer/posembed_input/pos_embedding"] = posemb
    for i in range(_depth(state)):
        b, p = _hf_block(state, i), f"Transformer/encoderblock_{i}/"
        for q in ("query", "key", "value"):
            out[p + f"{attn}/{q}/kernel"] = b[f"attention.attention.{q}.weight"].T.reshape(
                width, heads, -1)
            out[p + f"{attn}/{q}/bias"] = b[f"attention.attention.{q}.bias"].reshape(heads, -1)
        out[p + f"{attn}/out/kernel"] = b["attention.output.dense.weight"].T.reshape(
            heads, -1, width)
        out[p + f"{attn}/out/bias"] = b["attention.output.dense.bias"]
        out[p + "LayerNorm_0/scale"] = b["layernorm_before.weight"]
        out[p + "LayerNorm_0/bias"] = b["layernorm_before.bias"]
        out[p + f"{ln2}/scale"] = b["layernorm_after.weight"]
        out[p + f"{ln2}/bias"] = b["layernorm_after.bias"]
        out[p + f"{mlp}/Dense_0/kernel"] = b["intermediate.dense.weight"].T
        out[p + f"{mlp}/Dense_0/bias"] = b["intermediate.dense.bias"]
        out[p + f"{mlp}/Dense_1/kernel"] = b["output.dense.weight"].T
        out[p + f"{mlp}/Dense_1/bias"] = b["output.dense.bias"]
    return out


def to_timm(state) -> dict:
    """Hugging Face names -> timm vit_* names (fused qkv, PyTorch layouts kept)."""
    out = {
        "cls_token": state["vit.embeddings.cls_token"],
        "pos_embed": state["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["vit.layernorm.weight"],
        "norm.bias": state["vit.layernorm.bias"],
        "head.weight": state["classifier.weight"],
        "head.bias": state["classifier.bias"],
    }
    for i in range(_depth(state)):
        b, p = _hf_block(state, i), f"blocks.{i}."
        for leaf in ("weight", "bias"):
            out[p + f"attn.qkv.{leaf}"] = np.concatenate(
                [b[f"attention.attention.{q}.{leaf}"] for q in ("query", "key", "value")])
            out[p + f"attn.proj.{leaf}"] = b[f"attention.output.dense.{leaf}"]
            out[p + f"norm1.{leaf}"] = b[f"layernorm_before.{leaf}"]
            out[p + f"norm2.{leaf}"] = b[f"layernorm_after.{leaf}"]
            out[p + f"mlp.fc1.{leaf}"] = b[f"intermediate.dense.{leaf}"]
            out[p + f"mlp.fc2.{leaf}"] = b[f"output.dense.{leaf}"]
    return out


def scanned(npz: dict) -> dict:
    """big_vision with scan=True: one `Transformer/encoderblock/...` stack over layers."""
    out = {k: v for k, v in npz.items() if not k.startswith("Transformer/encoderblock_")}
    depth = 1 + max(int(m[1]) for k in npz
                    if (m := re.match(r"Transformer/encoderblock_(\d+)/", k)))
    for key in [k for k in npz if k.startswith("Transformer/encoderblock_0/")]:
        rest = key.removeprefix("Transformer/encoderblock_0/")
        out["Transformer/encoderblock/" + rest] = np.stack(
            [npz[f"Transformer/encoderblock_{i}/{rest}"] for i in range(depth)])
    return out


def _npz_arrays(model, big_vision: bool) -> dict[str, np.ndarray]:
    return to_augreg_npz(vit_hub_state(model), model.blocks[0].attn.num_heads,
                         big_vision=big_vision)


def _savez(directory, name: str, npz: dict) -> pathlib.Path:
    path = _directory(directory) / name
    np.savez(path, **npz)
    return path


def write_augreg_npz(model, directory) -> pathlib.Path:
    """vision_transformer / AugReg naming."""
    return _savez(directory, "augreg.npz", _npz_arrays(model, big_vision=False))


def write_big_vision_npz(model, directory) -> pathlib.Path:
    return _savez(directory, "big_vision.npz", _npz_arrays(model, big_vision=True))


def write_big_vision_scan_npz(model, directory) -> pathlib.Path:
    return _savez(directory, "big_vision_scan.npz", scanned(_npz_arrays(model, big_vision=True)))


def write_big_vision_params_npz(model, directory) -> pathlib.Path:
    """A big_vision training checkpoint: `params/...` beside optax state under `opt/...`."""
    params = _npz_arrays(model, big_vision=True)
    npz = {"params/" + k: v for k, v in params.items()}
    npz.update({f"opt/1/0/mu/{k}": np.zeros_like(v) for k, v in params.items()})
    npz["opt/1/0/count"] = np.asarray(1000, np.int32)
    return _savez(directory, "big_vision_params.npz", npz)


def write_big_vision_opt_target_npz(model, directory) -> pathlib.Path:
    """An old flax.optim checkpoint: `opt/target/...` beside `opt/state/...`."""
    params = _npz_arrays(model, big_vision=True)
    npz = {"opt/target/" + k: v for k, v in params.items()}
    npz.update({f"opt/state/param_states/{k}/grad_ema": np.zeros_like(v)
                for k, v in params.items()})
    npz["opt/state/step"] = np.asarray(1000, np.int32)
    return _savez(directory, "big_vision_opt_target.npz", npz)


def write_timm_vit(model, directory) -> pathlib.Path:
    path = _directory(directory) / "model.safetensors"
    save_file(to_timm(vit_hub_state(model)), str(path))
    return path


VIT_FORMATS: dict[str, Writer] = {
    "augreg_npz": write_augreg_npz,
    "big_vision_npz": write_big_vision_npz,
    "big_vision_scan_npz": write_big_vision_scan_npz,
    "big_vision_params_npz": write_big_vision_params_npz,
    "big_vision_opt_target_npz": write_big_vision_opt_target_npz,
    "hf_safetensors": write_hf_vit,
    "timm_safetensors": write_timm_vit,
}
# The formats whose class token has no position entry (see the module docstring).
BIG_VISION_LAYOUTS = ("big_vision_npz", "big_vision_scan_npz", "big_vision_params_npz",
                      "big_vision_opt_target_npz")


# ---------------------------------------------------------------------------------------------
# ResNet: cer_jax -> Hugging Face (through transformers) -> torchvision / timm.


def resnet_hf_config(model, **overrides):
    from transformers import ResNetConfig

    width = model.conv1.out_features
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    bottleneck = hasattr(model.layer1[0], "conv3")
    expansion = 4 if bottleneck else 1
    config = dict(
        embedding_size=width, hidden_sizes=[width * 2**s * expansion for s in range(4)],
        depths=[len(stage) for stage in stages],
        layer_type="bottleneck" if bottleneck else "basic", hidden_act="relu",
        downsample_in_first_stage=False, downsample_in_bottleneck=False,
        num_labels=model.head.out_features,
    )
    return ResNetConfig(**{**config, **overrides})


def resnet_hub_state(model) -> dict[str, np.ndarray]:
    """`model`'s arrays under Hugging Face ResNet Hub names and PyTorch layouts."""
    bn_leaves = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    state = {}
    for name, value in arrays(model).items():
        *modules, leaf = name.split("/")
        if modules == ["head"]:
            state[f"classifier.1.{'weight' if leaf == 'kernel' else 'bias'}"] = (
                value.T if leaf == "kernel" else value)
            continue
        if modules[0] in ("conv1", "bn1"):
            prefix = "resnet.embedder.embedder."
            part = modules[0]
        else:
            stage, block, part = int(modules[0][-1]) - 1, modules[1], modules[2]
            prefix = f"resnet.encoder.stages.{stage}.layers.{block}."
        if part.startswith("downsample"):
            module = prefix + "shortcut."
        elif modules[0] in ("conv1", "bn1"):
            module = prefix
        else:
            module = prefix + f"layer.{int(part[-1]) - 1}."
        if "conv" in part:
            state[module + "convolution.weight"] = value.transpose(3, 2, 0, 1)
        else:
            state[module + f"normalization.{bn_leaves[leaf]}"] = value
            if leaf == "var":
                state[module + "normalization.num_batches_tracked"] = np.asarray(0, np.int64)
    return {k: np.array(v, order="C") for k, v in state.items()}


def resnet_hf_reference(model):
    """A transformers ResNetForImageClassification computing what `model` does."""
    from transformers import ResNetForImageClassification

    return _from_hub_files(ResNetForImageClassification, resnet_hf_config(model),
                           resnet_hub_state(model))


def write_hf_resnet(model, directory) -> pathlib.Path:
    directory = _directory(directory)
    resnet_hf_reference(model).save_pretrained(directory)
    return directory / "model.safetensors"


def to_torchvision(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face ResNet names -> torchvision / timm names (layouts are the same)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("resnet.")
        key = key.replace("embedder.embedder.convolution.", "conv1.")
        key = key.replace("embedder.embedder.normalization.", "bn1.")
        key = key.replace("classifier.1.", "fc.")
        m = re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.*)", key)
        if m:
            stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
            rest = rest.replace("shortcut.convolution.", "downsample.0.")
            rest = rest.replace("shortcut.normalization.", "downsample.1.")
            rest = re.sub(r"layer\.(\d)\.convolution\.", lambda c: f"conv{int(c[1]) + 1}.", rest)
            rest = re.sub(r"layer\.(\d)\.normalization\.", lambda c: f"bn{int(c[1]) + 1}.", rest)
            key = f"layer{stage}.{block}.{rest}"
        out[key] = value
    return out


def write_torchvision_resnet(model, directory) -> pathlib.Path:
    path = _directory(directory) / "resnet.pth"
    state = to_torchvision(resnet_hub_state(model))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
    return path


def write_timm_resnet(model, directory) -> pathlib.Path:
    path = _directory(directory) / "model.safetensors"
    save_file(to_torchvision(resnet_hub_state(model)), str(path))
    return path


RESNET_FORMATS: dict[str, Writer] = {
    "torchvision_pth": write_torchvision_resnet,
    "timm_safetensors": write_timm_resnet,
    "hf_safetensors": write_hf_resnet,
}


# ---------------------------------------------------------------------------------------------
# MA-Net: the authors' training-state .pth.tar.


def manet_pytorch_name(path: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """NNX state path + Flax layout -> the authors' PyTorch key + PyTorch layout."""
    *modules, leaf = path.split("/")
    if modules[-2:] in (["mlp", "0"], ["mlp", "1"]):  # nn.Sequential(Flatten, Linear, ReLU, Linear)
        modules[-1] = {"0": "1", "1": "3"}[modules[-1]]
    if leaf == "kernel":
        leaf = "weight"
        value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    else:
        leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[
            leaf]
    return ".".join(modules + [leaf]), value


def manet_state_dict(model) -> dict[str, torch.Tensor]:
    """`model`'s arrays as the authors' state dict (no `module.` prefix), with BN step counters
    and random MS-Celeb-1M heads (MS_CELEB_CLASSES classes) in place of the model's."""
    state = {}
    for path, value in arrays(model).items():
        if path.split("/")[0] in ("fc_1", "fc_2"):
            continue
        key, value = manet_pytorch_name(path, value)
        state[key] = torch.from_numpy(np.array(value))
        if key.endswith("running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(1234)
    rng = np.random.default_rng(0)
    features = model.fc_1.in_features
    for head in ("fc_1", "fc_2"):
        state[f"{head}.weight"] = torch.from_numpy(
            rng.normal(0, 0.01, (MS_CELEB_CLASSES, features)).astype(np.float32))
        state[f"{head}.bias"] = torch.zeros(MS_CELEB_CLASSES)
    return state


class RecorderMeter:
    """Like the training-curve recorder the authors' script pickles beside the weights."""

    def __init__(self):
        self.epoch_losses = np.zeros((100, 2), np.float32)
        self.current_epoch = 30


def save_authors_checkpoint(state: dict[str, torch.Tensor], path, *, recorder: bool = True,
                            legacy: bool = False) -> pathlib.Path:
    """torch.save of the authors' training state: DataParallel `module.` names, optimizer state,
    a numpy `best_acc` and (as their script does) a pickled RecorderMeter that weights_only
    loading refuses. `legacy` writes PyTorch < 1.6's non-zip format, what the PyTorch 1.2 their
    README asks for saves."""
    checkpoint = {"epoch": 30, "best_acc": np.float64(0.9),
                  "state_dict": {"module." + k: v for k, v in state.items()},
                  "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]}}
    if recorder:
        checkpoint["recorder"] = RecorderMeter()
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    return pathlib.Path(path)


def write_manet(model, directory, *, code_version: str = "2021",
                legacy: bool = False) -> pathlib.Path:
    """The authors' `.pth.tar`. `code_version` only names the file: both versions store the same
    tensors; it is the path B order the weights were trained with (MANET_CODE_VERSIONS).
    `legacy`: PyTorch < 1.6's non-zip format (save_authors_checkpoint)."""
    path = _directory(directory) / f"manet_ms_celeb_{code_version}.pth.tar"
    return save_authors_checkpoint(manet_state_dict(model), path, legacy=legacy)


def write_manet_2021(model, directory, **kwargs) -> pathlib.Path:
    return write_manet(model, directory, code_version="2021", **kwargs)


def write_manet_2023(model, directory, **kwargs) -> pathlib.Path:
    return write_manet(model, directory, code_version="2023", **kwargs)


MANET_FORMATS: dict[str, Writer] = {
    "authors_pth_tar_2021": write_manet_2021,
    "authors_pth_tar_2023": write_manet_2023,
}
# format -> init.manet_code_version (and so model.path_b_order: 2021 forward, 2023 reverse)
MANET_CODE_VERSIONS = {"authors_pth_tar_2021": "2021", "authors_pth_tar_2023": "2023"}

FORMATS: dict[str, dict[str, Writer]] = {
    "vit": VIT_FORMATS, "resnet": RESNET_FORMATS, "manet": MANET_FORMATS,
}

