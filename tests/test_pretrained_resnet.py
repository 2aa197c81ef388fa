"""ResNet weight import: logits of the imported model match the PyTorch reference (Hugging Face
`ResNetForImageClassification`, random weights with perturbed BatchNorm statistics, no download)
for Hugging Face safetensors and for torchvision / timm state dicts (`.pth` and safetensors),
the latter written by tests/weight_files.py, re-keying weights independently of the importer."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import weight_files as wf
from flax import nnx
from helpers import random_images, torch_logits
from safetensors.numpy import load_file, save_file
from transformers import ResNetConfig, ResNetForImageClassification

from cer_jax.models import create_model
from cer_jax.pretrained import WeightImportError, load_pretrained

# microsoft/resnet-50's config.json (the label count aside).
RESNET50 = dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                layer_type="bottleneck", hidden_act="relu", downsample_in_first_stage=False,
                downsample_in_bottleneck=False)
TINY = {
    18: dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
             layer_type="basic"),
}


def _reference(seed: int = 0, **config) -> ResNetForImageClassification:
    """Random HF ResNet whose BatchNorm affine parameters and running statistics all matter."""
    torch.manual_seed(seed)
    model = ResNetForImageClassification(ResNetConfig(num_labels=7, **config)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _hf_file(model, directory):
    model.save_pretrained(directory)
    return directory / "model.safetensors"


def test_resnet50_hf_safetensors_logits_match(tmp_path):
    reference = _reference(**RESNET50)
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=50)
    report = load_pretrained(model, "resnet", _hf_file(reference, tmp_path), keep_head=True)
    assert len(report.loaded) == 267 and report.reinitialised == [] and report.resized == []
    assert len(report.unused) == 53 and all(k.endswith("num_batches_tracked")
                                            for k in report.unused)
    bn = reference.resnet.embedder.embedder.normalization
    np.testing.assert_array_equal(model.bn1.mean[...], bn.running_mean.numpy())
    np.testing.assert_array_equal(model.bn1.var[...], bn.running_var.numpy())
    images = random_images(2, 64)
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def source():
    """A random cer_jax ResNet-50 (width 8) and its transformers twin."""
    model = wf.randomise(nnx.eval_shape(
        lambda: create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=50, width=8)))
    return model, wf.resnet_hf_reference(model)


@pytest.mark.parametrize("fmt", sorted(wf.RESNET_FORMATS))
def test_every_format_round_trips_and_matches_transformers(source, tmp_path, fmt):
    model, reference = source
    path = wf.RESNET_FORMATS[fmt](model, tmp_path)
    if fmt == "torchvision_pth":
        assert "layer2.0.downsample.0.weight" in torch.load(path, weights_only=True)
    target = create_model("resnet", num_classes=7, rngs=nnx.Rngs(1), depth=50, width=8)
    report = load_pretrained(target, "resnet", path, keep_head=True)
    assert report.reinitialised == [] and len(report.loaded) == 267
    expected, got = wf.arrays(model), wf.arrays(target)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    images = random_images(2, 64, seed=3)
    np.testing.assert_allclose(target(jnp.asarray(images)).logits,
                               torch_logits(reference, images), atol=1e-4, rtol=0)


def test_resnet18_torchvision_state_dict_logits_match(tmp_path):
    reference = _reference(seed=18, **TINY[18])
    state = wf.to_torchvision(load_file(str(_hf_file(reference, tmp_path / "hf"))))
    path = tmp_path / "resnet.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=18, width=8)
    report = load_pretrained(model, "resnet", path, keep_head=True)
    assert report.reinitialised == []
    images = random_images(2, 64, seed=18)
    np.testing.assert_allclose(model(jnp.asarray(images)).logits, torch_logits(reference, images),
                               atol=1e-4, rtol=0)


def test_new_head_left_at_initialisation(tmp_path):
    reference = _reference(**TINY[18])
    model = create_model("resnet", num_classes=3, rngs=nnx.Rngs(0), depth=18, width=8)
    report = load_pretrained(model, "resnet", _hf_file(reference, tmp_path), keep_head=True)
    # 7-way head in the file, 3-way in the model: keep_head cannot apply.
    assert report.reinitialised == ["head/bias", "head/kernel"]
    assert "head/kernel" not in report.loaded and "conv1/kernel" in report.loaded


def test_backbone_shape_mismatch_is_a_clear_error(tmp_path):
    reference = _reference(**TINY[18])
    state = wf.to_torchvision(load_file(str(_hf_file(reference, tmp_path / "hf"))))
    state["layer1.0.bn1.running_var"] = np.ones(9, np.float32)
    save_file(state, str(tmp_path / "r18.safetensors"))
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=18, width=8)
    before = np.asarray(model.conv1.kernel[...]).copy()
    with pytest.raises(WeightImportError) as err:
        load_pretrained(model, "resnet", tmp_path / "r18.safetensors")
    message = str(err.value)
    assert "check the model variant in config.model matches the checkpoint" in message
    assert ("shape mismatch: layer1/0/bn1/var is (8,) in the model, (9,) in the "
            "checkpoint") in message
    np.testing.assert_array_equal(model.conv1.kernel[...], before)  # nothing written


@pytest.mark.parametrize("depth, width, fix", [
    (34, 8, "ResNet-34 (width 8): set --config.model.depth=18."),
    (50, 16, "ResNet-50 (width 16): set --config.model.depth=18 --config.model.width=8."),
])
def test_file_of_another_depth_or_width_names_the_keys_to_set(tmp_path, depth, width, fix):
    """A ResNet-18 file for another depth: one line with the fix, not 20 missing tensors."""
    reference = _reference(**TINY[18])
    state = wf.to_torchvision(load_file(str(_hf_file(reference, tmp_path / "hf"))))
    save_file(state, str(tmp_path / "r18.safetensors"))
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=depth, width=width)
    with pytest.raises(WeightImportError) as e:
        load_pretrained(model, "resnet", tmp_path / "r18.safetensors")
    assert str(e.value) == (
        f"{tmp_path / 'r18.safetensors'}: the checkpoint holds a ResNet-18 (width 8), and "
        f"config.model builds a {fix}")


def test_unknown_tensor_is_an_error_not_skipped(tmp_path):
    reference = _reference(**TINY[18])
    state = wf.to_torchvision(load_file(str(_hf_file(reference, tmp_path / "hf"))))
    state["layer1.0.se.fc1.weight"] = np.ones((2, 8, 1, 1), np.float32)  # an SE-ResNet
    save_file(state, str(tmp_path / "seresnet.safetensors"))
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=18, width=8)
    with pytest.raises(WeightImportError,
                       match=r"torchvision / timm ResNet checkpoint has tensors this importer does "
                             r"not understand \(a different architecture\?\): layer1\.0\.se\."):
        load_pretrained(model, "resnet", tmp_path / "seresnet.safetensors")


def test_the_manet_file_given_to_the_resnet_member_says_what_it_is(tmp_path):
    """The authors' MA-Net file shares conv1 / bn1 / layer1-2 names with a ResNet: it was "has
    tensors this importer does not understand (a different architecture?)" and twenty names."""
    manet = nnx.eval_shape(lambda: create_model("manet", num_classes=7, rngs=nnx.Rngs(0),
                                                width=8))
    path = wf.MANET_FORMATS["authors_pth_tar_2021"](wf.randomise(manet), tmp_path)
    model = nnx.eval_shape(lambda: create_model("resnet", num_classes=7, rngs=nnx.Rngs(0),
                                                depth=18, width=8))
    with pytest.raises(WeightImportError) as e:
        load_pretrained(model, "resnet", path)
    assert str(e.value) == (
        f"{path}: the checkpoint holds MA-Net weights (the authors' names: "
        "layer3_1_p1.0.bn1.bias, layer3_1_p1.0.bn1.running_mean, ...), not a ResNet: give a "
        "torchvision / timm / Hugging Face ResNet file here, and this one to the MA-Net member "
        "(config.model.name='manet').")
