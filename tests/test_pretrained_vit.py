"""ViT weight import: logits of the imported model match the PyTorch reference (Hugging Face
`transformers`, no download) for the Hugging Face, AugReg/big_vision `.npz` (flat, scanned,
`params/` and `opt/target/` prefixed) and timm layouts. The files are written by
tests/weight_files.py, re-keying weights independently of the importer's code; the reference is
transformers' own ViT, independent of cer_jax's."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import torch
import weight_files as wf
from flax import nnx
from helpers import random_images, torch_logits
from safetensors.numpy import save_file
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


@pytest.fixture(scope="module")
def source():
    """A random cer_jax ViT (test/8, 32 px, exact GELU, epsilon 1e-12) and its transformers twin."""
    model = wf.randomise(_jax_vit("test/8", 32), seed=0)
    return model, wf.vit_hf_reference(model)


@pytest.fixture(scope="module")
def tiny(source, tmp_path_factory):
    """(reference model, its model.safetensors path written by save_pretrained)."""
    model, reference = source
    return reference, wf.write_hf_vit(model, tmp_path_factory.mktemp("hf_vit"))


def test_hf_safetensors_logits_match(tiny):
    reference, path = tiny
    assert (path.parent / "config.json").is_file()
    images = random_images(3, 32)
    model = _jax_vit("test/8", 32)
    report = load_pretrained(model, "vit", path, keep_head=True)
    assert report.reinitialised == [] and report.unused == [] and report.resized == []
    assert len(report.loaded) == 40
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_model_settings_other_than_the_file_implies_warn(tiny, caplog):
    """config.json says layer_norm_eps=1e-12; a model built with 1e-6 loads, with a warning."""
    reference, path = tiny
    model = _jax_vit("test/8", 32, layer_norm_eps=1e-6)
    with caplog.at_level(logging.WARNING):
        load_pretrained(model, "vit", path, keep_head=True)
    assert "implies model.layer_norm_eps=1e-12" in caplog.text
    assert "built with 1e-06" in caplog.text and "gelu_approximate" not in caplog.text
    images = random_images(2, 32)
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_new_head_is_left_at_initialisation(tiny):
    _, path = tiny
    model = _jax_vit("test/8", 32)
    report = load_pretrained(model, "vit", path)  # keep_head=False: a new label space
    assert report.reinitialised == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(model.head.kernel[...], 0.0)  # head_zeroinit


@pytest.mark.parametrize("fmt", sorted(wf.VIT_FORMATS))
def test_every_format_round_trips(source, tmp_path, fmt):
    """Each written file gives back the source's arrays (big_vision: its class token carries its
    position entry) and logits; the training-state .npz files' optimizer state is not read."""
    model, _ = source
    path = wf.VIT_FORMATS[fmt](model, tmp_path)
    target = _jax_vit("test/8", 32)
    report = load_pretrained(target, "vit", path, keep_head=True)
    assert len(report.loaded) == 40 and report.unused == []
    expected, got = wf.arrays(model), wf.arrays(target)
    if fmt in wf.BIG_VISION_LAYOUTS:
        assert report.resized == ["pos_embedding (1, 16, 32) -> (1, 17, 32): zero class-token "
                                  "entry added (big_vision layout)"]
        np.testing.assert_allclose(got["cls"], expected["cls"] + expected["pos_embedding"][:, :1],
                                   rtol=1e-6)
        np.testing.assert_array_equal(got["pos_embedding"][:, 0], 0.0)
        np.testing.assert_array_equal(got["pos_embedding"][:, 1:],
                                      expected["pos_embedding"][:, 1:])
        del expected["cls"], expected["pos_embedding"]
    else:
        assert report.resized == []
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    images = jnp.asarray(random_images(2, 32, seed=4))
    np.testing.assert_allclose(target(images).logits, model(images).logits, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def big_vision_network():
    """A random ViT as big_vision computes it (tanh GELU, epsilon 1e-6) and its transformers twin
    with the same activation (`gelu_pytorch_tanh`) and epsilon: an independent reference."""
    model = wf.randomise(_jax_vit("test/8", 32, gelu_approximate=True, layer_norm_eps=1e-6),
                        seed=1)
    reference = wf.vit_hf_reference(model)
    assert (reference.config.hidden_act, reference.config.layer_norm_eps) == (
        "gelu_pytorch_tanh", 1e-6)
    return model, reference


@pytest.mark.parametrize("fmt", ["augreg_npz", "big_vision_scan_npz", "big_vision_params_npz"])
def test_npz_computes_the_big_vision_network(big_vision_network, tmp_path, caplog, fmt):
    """Loaded into a ViT with the settings the file implies, an .npz gives big_vision's logits to
    1e-5; with the exact GELU it does not (and the import warns)."""
    model, reference = big_vision_network
    path = wf.VIT_FORMATS[fmt](model, tmp_path)
    images = random_images(2, 32, seed=1)
    expected = torch_logits(reference, images)
    target = _jax_vit("test/8", 32, gelu_approximate=True, layer_norm_eps=1e-6)
    with caplog.at_level(logging.WARNING):
        load_pretrained(target, "vit", path, keep_head=True)
    assert caplog.text == ""
    np.testing.assert_allclose(target(jnp.asarray(images)).logits, expected, atol=1e-5, rtol=0)

    exact = _jax_vit("test/8", 32, gelu_approximate=False, layer_norm_eps=1e-6)
    with caplog.at_level(logging.WARNING):
        load_pretrained(exact, "vit", path, keep_head=True)
    assert "implies model.gelu_approximate=True" in caplog.text
    assert np.abs(np.asarray(exact(jnp.asarray(images)).logits) - expected).max() > 1e-5


def test_big_vision_npz_of_before_2022_computes_its_network(big_vision_network, tmp_path):
    """big_vision's ViT kept its position embedding in the encoder before 2022
    (`Transformer/pos_embedding`, with the class token's entry; big_vision's fix_old_checkpoints
    still reads it): was 'tensors this importer does not understand (a different
    architecture?): Transformer/pos_embedding'."""
    model, reference = big_vision_network
    state = wf.vit_hub_state(model)
    npz = wf.to_augreg_npz(state, model.blocks[0].attn.num_heads, big_vision=True)
    del npz["pos_embedding"]
    npz["cls"] = state["vit.embeddings.cls_token"]
    npz["Transformer/pos_embedding"] = state["vit.embeddings.position_embeddings"]
    np.savez(tmp_path / "vit_2021.npz", **npz)
    target = _jax_vit("test/8", 32, gelu_approximate=True, layer_norm_eps=1e-6)
    report = load_pretrained(target, "vit", tmp_path / "vit_2021.npz", keep_head=True)
    assert len(report.loaded) == 40 and report.unused == [] and report.resized == []
    images = random_images(2, 32, seed=5)
    np.testing.assert_allclose(target(jnp.asarray(images)).logits,
                               torch_logits(reference, images), atol=1e-5, rtol=0)


def test_timm_safetensors_logits_match(source, tmp_path):
    model, reference = source
    path = wf.write_timm_vit(model, tmp_path)
    target = _jax_vit("test/8", 32)
    load_pretrained(target, "vit", path, keep_head=True)
    images = random_images(2, 32, seed=2)
    np.testing.assert_allclose(target(jnp.asarray(images)).logits,
                               torch_logits(reference, images), atol=1e-4, rtol=0)


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


def _big_vision_resample(grid: np.ndarray, side: int) -> np.ndarray:
    """big_vision's `resample_posemb` (big_vision/models/vit.py): SciPy order-1 zoom of the grid."""
    old = int(round(grid.shape[1] ** 0.5))
    zoomed = scipy.ndimage.zoom(grid.reshape(old, old, -1), (side / old, side / old, 1), order=1)
    return zoomed.reshape(1, side * side, -1)


@pytest.mark.parametrize("image_size", [160, 288])
def test_position_embedding_resized_as_big_vision(tmp_path, image_size):
    config = ViTConfig(image_size=224, **{**TINY, "patch_size": 16})
    reference = _reference(config)
    reference.save_pretrained(tmp_path)
    model = _jax_vit("test/16", image_size)
    report = load_pretrained(model, "vit", tmp_path / "model.safetensors")
    side = image_size // 16
    posemb = reference.vit.embeddings.position_embeddings.detach().numpy()
    assert report.resized == [
        f"pos_embedding (1, 197, 32) -> (1, {1 + side * side}, 32): grid 14x14 -> "
        f"{side}x{side} (order-1 zoom, as big_vision)"
    ]
    got = np.asarray(model.pos_embedding[...])
    assert got.shape == (1, 1 + side * side, 32)
    np.testing.assert_array_equal(got[:, 0], posemb[:, 0])  # the class-token entry is kept
    np.testing.assert_allclose(got[:, 1:], _big_vision_resample(posemb[:, 1:], side),
                               rtol=0, atol=1e-6)
    grid, old = got[0, 1:].reshape(side, side, 32), posemb[0, 1:].reshape(14, 14, 32)
    for corner in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:  # zoom keeps the corner samples
        np.testing.assert_allclose(grid[corner], old[corner], rtol=1e-6)
    assert model(jnp.asarray(random_images(1, image_size))).logits.shape == (1, 7)


def test_gap_model_drops_class_token(source, tiny):
    _, path = tiny
    model = _jax_vit("test/8", 32, pool="gap")
    report = load_pretrained(model, "vit", path)
    assert report.unused == ["vit.embeddings.cls_token"]
    assert report.resized == [
        "pos_embedding (1, 17, 32) -> (1, 16, 32): class-token entry dropped (pool='gap')"
    ]
    np.testing.assert_array_equal(model.pos_embedding[...],
                                  wf.arrays(source[0])["pos_embedding"][:, 1:])


def test_a_gap_checkpoint_into_a_class_token_model_names_the_pool_to_set(tmp_path):
    """big_vision's GAP ViTs have no class token: was 'missing: cls' and a check of the
    variant, which is right."""
    npz = dict(np.load(wf.write_big_vision_npz(_jax_vit("test/8", 32), tmp_path)))
    del npz["cls"]  # as big_vision saves a pool_type="gap" ViT
    path = tmp_path / "gap.npz"
    np.savez(path, **npz)
    with pytest.raises(WeightImportError) as error:
        load_pretrained(_jax_vit("test/8", 32), "vit", path)
    assert str(error.value) == (
        f"{path}: the checkpoint has no class token (cls): it was trained with global average "
        "pooling; set --config.model.pool=gap.")
    load_pretrained(_jax_vit("test/8", 32, pool="gap"), "vit", path)  # which then loads it


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_a_checkpoint_without_position_embedding_says_what_it_is(tmp_path, pool):
    """big_vision's posemb='sincos2d' ViTs (GAP, no cls) save no position embedding: was
    'missing: pos_embedding' (and cls) with the advice to check model.variant, which is right."""
    npz = dict(np.load(wf.write_big_vision_npz(_jax_vit("test/8", 32), tmp_path)))
    del npz["cls"], npz["pos_embedding"]  # as big_vision saves a sincos2d GAP ViT
    path = tmp_path / "sincos2d.npz"
    np.savez(path, **npz)
    with pytest.raises(WeightImportError) as error:
        load_pretrained(_jax_vit("test/8", 32, pool=pool), "vit", path)
    assert str(error.value) == (
        f"{path}: the checkpoint has no position embedding: its ViT computes a fixed one "
        "(big_vision's posemb='sincos2d'), and cer_jax's ViT learns its own; use a ViT file with "
        "a learnt one, e.g. an AugReg .npz (README, 'Bring pre-trained weights').")


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


def test_unknown_tensor_is_an_error_not_skipped(tmp_path, source):
    state = wf.to_timm(wf.vit_hub_state(source[0]))
    state["blocks.0.ls1.gamma"] = np.ones(32, np.float32)  # layer scale: another architecture
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightImportError, match=r"does not understand .*: blocks\.0\.ls1\.gamma"):
        load_pretrained(_jax_vit("test/8", 32), "vit", tmp_path / "model.safetensors")


@pytest.mark.parametrize("extra", ["fc_norm", "norm_pre"])
def test_timm_avg_pool_and_clip_variants_name_the_file_to_use(tmp_path, source, extra):
    """timm's fc_norm (LayerNorm after average pooling) and norm_pre (CLIP) compute another
    network than cer_jax's ViT, whichever pool it has."""
    state = wf.to_timm(wf.vit_hub_state(source[0]))
    if extra == "fc_norm":
        state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop(
            "norm.bias")
    else:
        state["norm_pre.weight"], state["norm_pre.bias"] = np.ones(32), np.zeros(32)
    path = tmp_path / "model.safetensors"
    save_file({k: np.asarray(v, np.float32) for k, v in state.items()}, str(path))
    with pytest.raises(WeightImportError) as error:
        load_pretrained(_jax_vit("test/8", 32, pool="gap"), "vit", path)
    assert str(error.value) == (
        f"{path}: timm ViT checkpoint with {extra}: timm's average-pool (fc_norm) and CLIP "
        "(norm_pre) ViT variants are not supported; use an AugReg file, e.g. timm's "
        "vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors or the AugReg .npz "
        "(README, 'Bring pre-trained weights').")


@pytest.mark.parametrize("fmt", ["augreg_npz", "hf_safetensors"])
def test_file_of_another_vit_size_names_the_variant_to_set(source, tmp_path, fmt):
    """An S/16 or B/32 file with the default B/16 config: one line naming the variant, not a list
    of every tensor whose shape differs."""
    path = wf.VIT_FORMATS[fmt](source[0], tmp_path)  # test/8
    model = _jax_vit("mu/16", 32)
    with pytest.raises(WeightImportError) as error:
        load_pretrained(model, "vit", path)
    assert str(error.value) == (
        f"{path}: the checkpoint holds a ViT test/8 (width 32, depth 2, MLP 64, patch 8), and "
        "config.model.variant='mu/16' builds mu/16 (width 64, depth 4, MLP 128, patch 16): set "
        "--config.model.variant=test/8.")
