"""ViT weight import: logits of the imported model match the PyTorch reference (Hugging Face
`transformers`, random weights, no download) for the Hugging Face, AugReg/big_vision `.npz` and
timm layouts. The `.npz` and timm files are written here by re-keying the reference weights
independently of the importer's code."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from helpers import random_images, torch_logits
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch_file
from transformers import ViTConfig, ViTForImageClassification, ViTModel

from cer_jax.models import create_model
from cer_jax.pretrained import WeightImportError, load_pretrained

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            patch_size=8, num_labels=7)


def _reference(config: ViTConfig, seed: int = 0) -> ViTForImageClassification:
    """A random HF ViT whose every tensor (LayerNorm scales, biases too) is non-trivial."""
    torch.manual_seed(seed)
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _jax_vit(variant: str, image_size: int, **kwargs):
    kwargs.setdefault("layer_norm_eps", 1e-12)  # what HF ViTConfig uses
    return create_model("vit", num_classes=7, rngs=nnx.Rngs(1), variant=variant,
                        image_size=image_size, **kwargs)


def _state(model, directory) -> dict[str, np.ndarray]:
    """The tensors as Hugging Face writes them (Hub names; transformers 5 renames in memory)."""
    model.save_pretrained(directory)
    return load_file(str(directory / "model.safetensors"))


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


def to_augreg_npz(state, depth: int, heads: int, big_vision: bool = False) -> dict:
    """HF names/layouts -> vision_transformer (AugReg) or big_vision .npz names/layouts."""
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
    if big_vision:  # no position entry for the class token
        assert np.all(posemb[:, 0] == 0)
        out["pos_embedding"] = posemb[:, 1:]
    else:
        out["Transformer/posembed_input/pos_embedding"] = posemb
    for i in range(depth):
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


def to_timm(state, depth: int) -> dict:
    """HF names -> timm vit_* names (fused qkv, PyTorch layouts kept)."""
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
    for i in range(depth):
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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(reference model, its model.safetensors path) for a 32x32 / patch-8 two-layer ViT."""
    model = _reference(ViTConfig(image_size=32, **TINY))
    directory = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(directory)
    return model, directory / "model.safetensors"


def test_hf_safetensors_logits_match(tiny):
    reference, path = tiny
    images = random_images(3, 32)
    model = _jax_vit("test/8", 32)
    report = load_pretrained(model, "vit", path, keep_head=True)
    assert report.reinitialised == [] and report.unused == [] and report.resized == []
    assert len(report.loaded) == 40
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_hf_default_eps_warns_and_stays_close(tiny, caplog):
    reference, path = tiny
    images = random_images(2, 32)
    model = _jax_vit("test/8", 32, layer_norm_eps=1e-6)
    with caplog.at_level(logging.WARNING):
        load_pretrained(model, "vit", path, keep_head=True)
    assert "layer_norm_eps=1e-06" in caplog.text and "1e-12" in caplog.text
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_new_head_is_left_at_initialisation(tiny):
    _, path = tiny
    model = _jax_vit("test/8", 32)
    report = load_pretrained(model, "vit", path)  # keep_head=False: a new label space
    assert report.reinitialised == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(model.head.kernel[...], 0.0)  # head_zeroinit


def _scanned(arrays: dict) -> dict:
    """big_vision with scan=True: one `Transformer/encoderblock/...` stack over layers."""
    out = {k: v for k, v in arrays.items() if not k.startswith("Transformer/encoderblock_")}
    for key in [k for k in arrays if k.startswith("Transformer/encoderblock_0/")]:
        rest = key.removeprefix("Transformer/encoderblock_0/")
        out["Transformer/encoderblock/" + rest] = np.stack(
            [arrays[f"Transformer/encoderblock_{i}/{rest}"] for i in range(2)])
    return out


@pytest.mark.parametrize("layout", ["augreg", "big_vision", "big_vision_scan"])
def test_npz_logits_match(tmp_path, layout):
    reference = _reference(ViTConfig(image_size=32, **TINY), seed=1)
    big_vision = layout.startswith("big_vision")
    if big_vision:  # big_vision adds no position embedding to the class token
        with torch.no_grad():
            reference.vit.embeddings.position_embeddings[:, 0] = 0.0
    path = tmp_path / "vit.npz"
    arrays = to_augreg_npz(_state(reference, tmp_path / "hf"), depth=2, heads=2,
                           big_vision=big_vision)
    np.savez(path, **(_scanned(arrays) if layout == "big_vision_scan" else arrays))
    model = _jax_vit("test/8", 32)
    report = load_pretrained(model, "vit", path, keep_head=True)
    assert len(report.loaded) == 40
    images = random_images(2, 32, seed=1)
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_timm_safetensors_logits_match(tmp_path):
    reference = _reference(ViTConfig(image_size=32, **TINY), seed=2)
    path = tmp_path / "model.safetensors"
    save_file(to_timm(_state(reference, tmp_path / "hf"), depth=2), str(path))
    model = _jax_vit("test/8", 32)
    load_pretrained(model, "vit", path, keep_head=True)
    images = random_images(2, 32, seed=2)
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_hf_in_memory_names_and_pooler(tmp_path):
    """A ViTModel state dict saved by hand (transformers 5 module names, no `vit.` prefix): its
    pooler (dense + tanh on the class token) is the pre-logits layer."""
    torch.manual_seed(3)
    reference = ViTModel(ViTConfig(image_size=32, **TINY), add_pooling_layer=True).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = reference.state_dict()
    assert "layers.0.attention.q_proj.weight" in state and "pooler.dense.weight" in state
    save_torch_file(state, str(tmp_path / "model.safetensors"))
    model = _jax_vit("test/8", 32, representation_size=32)
    report = load_pretrained(model, "vit", tmp_path / "model.safetensors")
    assert report.reinitialised == ["head/bias", "head/kernel"] and report.unused == []
    images = random_images(2, 32, seed=3)
    with torch.no_grad():
        pooled = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(model(jnp.asarray(images)).features,
                               pooled.pooler_output.numpy(), atol=1e-5, rtol=0)
    plain = _jax_vit("test/8", 32)  # no pre-logits layer: the pooler is dropped, and reported
    report = load_pretrained(plain, "vit", tmp_path / "model.safetensors")
    assert report.unused == ["pooler.dense.bias", "pooler.dense.weight"]


def test_vit_b16_forward_matches(tmp_path):
    """The real ViT-B/16 geometry (224, 12 layers, 12 heads), one image, forward only."""
    config = ViTConfig(num_labels=7)  # transformers' defaults are ViT-B/16 at 224
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size) == (768, 12, 16)
    reference = _reference(config)
    reference.save_pretrained(tmp_path)
    model = _jax_vit("B/16", 224)
    report = load_pretrained(model, "vit", tmp_path / "model.safetensors", keep_head=True)
    assert len(report.loaded) == 4 + 16 * 12 + 2 + 2
    images = random_images(1, 224)
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def _interpolate(grid: np.ndarray, side: int) -> np.ndarray:
    """Independent reference: torch bilinear, half-pixel centres, antialiased when shrinking."""
    g = int(round(grid.shape[1] ** 0.5))
    t = torch.from_numpy(grid.reshape(1, g, g, -1)).permute(0, 3, 1, 2)
    out = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return out.permute(0, 2, 3, 1).reshape(1, side * side, -1).numpy()


@pytest.mark.parametrize("image_size", [160, 288])
def test_position_embedding_resized_from_224(tmp_path, image_size):
    config = ViTConfig(image_size=224, **{**TINY, "patch_size": 16})
    reference = _reference(config)
    reference.save_pretrained(tmp_path)
    model = _jax_vit("test/16", image_size)
    report = load_pretrained(model, "vit", tmp_path / "model.safetensors")
    side = image_size // 16
    posemb = reference.vit.embeddings.position_embeddings.detach().numpy()
    assert report.resized == [
        f"pos_embedding (1, 197, 32) -> (1, {1 + side * side}, 32): grid 14x14 -> "
        f"{side}x{side} (bilinear)"
    ]
    got = np.asarray(model.pos_embedding[...])
    assert got.shape == (1, 1 + side * side, 32)
    np.testing.assert_array_equal(got[:, 0], posemb[:, 0])  # the class-token entry is kept
    np.testing.assert_allclose(got[:, 1:], _interpolate(posemb[:, 1:], side), atol=1e-5)
    assert model(jnp.asarray(random_images(1, image_size))).logits.shape == (1, 7)


def test_gap_model_drops_class_token(tiny):
    reference, path = tiny
    model = _jax_vit("test/8", 32, pool="gap")
    report = load_pretrained(model, "vit", path)
    assert report.unused == ["vit.embeddings.cls_token"]
    assert report.resized == [
        "pos_embedding (1, 17, 32) -> (1, 16, 32): class-token entry dropped (pool='gap')"
    ]
    np.testing.assert_array_equal(
        model.pos_embedding[...], reference.vit.embeddings.position_embeddings.detach()[:, 1:]
    )


def test_backbone_shape_mismatch_is_a_clear_error(tmp_path):
    reference = _reference(ViTConfig(image_size=32, **{**TINY, "intermediate_size": 48}))
    reference.save_pretrained(tmp_path)
    model = _jax_vit("test/8", 32)
    before = np.asarray(model.blocks[0].norm1.scale[...]).copy()
    with pytest.raises(WeightImportError) as err:
        load_pretrained(model, "vit", tmp_path / "model.safetensors")
    message = str(err.value)
    assert "does not fit this model (6 problems" in message
    assert ("shape mismatch: blocks/0/mlp/fc1/kernel is (32, 64) in the model, (32, 48) in the "
            "checkpoint") in message
    np.testing.assert_array_equal(model.blocks[0].norm1.scale[...], before)  # nothing written


def test_unknown_tensor_is_an_error_not_skipped(tmp_path, tiny):
    reference, _ = tiny
    state = to_timm(_state(reference, tmp_path / "hf"), depth=2)
    state["blocks.0.ls1.gamma"] = np.ones(32, np.float32)  # layer scale: another architecture
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightImportError, match=r"does not understand .*: blocks\.0\.ls1\.gamma"):
        load_pretrained(_jax_vit("test/8", 32), "vit", tmp_path / "model.safetensors")
