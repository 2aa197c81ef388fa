"""Import of the authors' MA-Net checkpoint layout (`.pth.tar`, `module.` prefix, K = 12,666).

The checkpoint is built from a model's own random parameters re-keyed to PyTorch names by
tests/weight_files.py (written independently of cer_jax.pretrained.manet), so the import must
give back exactly those arrays.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import weight_files as wf
from flax import nnx

from cer_jax.models import create_model
from cer_jax.pretrained import (
    WeightImportError,
    implied_settings,
    load_pretrained,
    model_settings,
)
from cer_jax.pretrained.readers import CheckpointReadError, read_checkpoint

WIDTH, MS_CELEB_CLASSES = 8, wf.MS_CELEB_CLASSES
HEADS = ["fc_1/bias", "fc_1/kernel", "fc_2/bias", "fc_2/kernel"]


def random_model(seed: int, **kwargs) -> nnx.Module:
    """A tiny MA-Net filled from numpy (cheaper on CPU than jax.random op by op)."""
    model = nnx.eval_shape(
        lambda: create_model("manet", num_classes=7, rngs=nnx.Rngs(0), width=WIDTH, **kwargs))
    return wf.randomise(model, seed)


def save(state: dict[str, torch.Tensor], path) -> str:
    return str(wf.save_authors_checkpoint(state, path, recorder=False))


@pytest.fixture(scope="module")
def source():
    return random_model(seed=1)


@pytest.fixture(scope="module")
def checkpoint(source):
    return wf.manet_state_dict(source)


def snapshot(model) -> dict[str, np.ndarray]:
    return wf.arrays(model)


def test_checkpoint_keys_look_like_the_authors(checkpoint):
    for key in ["conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                "layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
                "layer3_1_p1.0.cbam.ChannelGate.mlp.1.weight",
                "layer4_1_p4.1.cbam.ChannelGate.mlp.3.bias",
                "layer3_1_p2.0.cbam.SpatialGate.spatial.conv.weight",
                "layer3_1_p2.0.cbam.SpatialGate.spatial.bn.running_mean",
                "layer3_2.0.conv1_2_1.weight", "layer3_2.0.bn2_2_4.bias", "fc_1.weight"]:
        assert key in checkpoint, key
    assert tuple(checkpoint["conv1.weight"].shape) == (WIDTH, 3, 7, 7)
    assert tuple(checkpoint["fc_2.weight"].shape) == (MS_CELEB_CLASSES, 8 * WIDTH)


def test_default_order_is_the_published_weights(source):
    assert model_settings(source, "manet") == {"path_b_order": "forward"}


@pytest.mark.parametrize("fmt", sorted(wf.MANET_FORMATS))
def test_import_round_trips_exactly_and_replaces_heads(source, checkpoint, tmp_path, fmt):
    path = wf.MANET_FORMATS[fmt](source, tmp_path)
    implied = implied_settings("manet", path, manet_code_version=wf.MANET_CODE_VERSIONS[fmt])
    target = random_model(5, path_b_order=implied["path_b_order"].value)
    before = snapshot(target)
    report = load_pretrained(target, "manet", path)

    expected, after = snapshot(source), snapshot(target)
    assert sorted(report.reinitialised) == HEADS
    assert sorted(report.loaded) == sorted(set(expected) - set(HEADS))
    assert len(report.unused) == sum(k.endswith("running_var") for k in checkpoint)
    assert all(k.endswith("num_batches_tracked") for k in report.unused)
    for name in expected:
        if name in HEADS:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        else:
            np.testing.assert_array_equal(after[name], expected[name], err_msg=name)
    assert "fc_1/kernel" in report.summary()


def test_imported_model_computes_the_source_features(source, checkpoint, tmp_path):
    target = random_model(6)
    load_pretrained(target, "manet", save(checkpoint, tmp_path / "m.pth.tar"))
    images = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(target(images).features, source(images).features, rtol=1e-6)


def _assert_backbone_loaded(source, path, seed: int) -> None:
    """Every tensor but the heads of `source` reaches a fresh model from the file at `path`."""
    target = random_model(seed)
    report = load_pretrained(target, "manet", path)
    expected, after = snapshot(source), snapshot(target)
    assert sorted(report.loaded) == sorted(set(expected) - set(HEADS))
    for name in report.loaded:
        np.testing.assert_array_equal(after[name], expected[name], err_msg=name)


def test_objects_saved_beside_the_weights_are_not_needed(source, checkpoint, tmp_path):
    """weights_only refuses the recorder's class; the weights still load, nothing is run."""
    path = wf.save_authors_checkpoint(checkpoint, tmp_path / "with_recorder.pth.tar")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    _assert_backbone_loaded(source, path, seed=9)


def test_non_tensor_state_dict_entry_is_a_clear_error(checkpoint, tmp_path):
    path = tmp_path / "odd.pth.tar"
    state = {"module." + k: v for k, v in checkpoint.items()}
    state["module.conv1.weight"] = wf.RecorderMeter()
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointReadError,
                       match=r"state-dict entry 'module\.conv1\.weight' is a pickled "
                             r"weight_files\.RecorderMeter object, not a tensor"):
        load_pretrained(random_model(10), "manet", path)


def broken(checkpoint, **changes) -> dict[str, torch.Tensor]:
    state = dict(checkpoint)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def test_wrong_shaped_backbone_tensor_names_the_tensor(checkpoint, tmp_path):
    bad = broken(checkpoint, **{"layer2.0.conv1.weight": torch.zeros(2 * WIDTH, WIDTH, 5, 5)})
    path = save(bad, tmp_path / "bad.pth.tar")
    target = random_model(7)
    before = snapshot(target)
    with pytest.raises(WeightImportError,
                       match=r"shape mismatch: layer2/0/conv1/kernel is \(3, 3, 8, 16\) in the "
                             r"model, \(5, 5, 8, 16\) in the checkpoint"):
        load_pretrained(target, "manet", path)
    after = snapshot(target)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-written


def test_file_of_another_width_names_the_width_to_set(checkpoint, tmp_path):
    """The authors' file (width 64) into the smoke config (16): one line, not 20 mismatches."""
    path = save(checkpoint, tmp_path / "w8.pth.tar")
    target = nnx.eval_shape(
        lambda: create_model("manet", num_classes=7, rngs=nnx.Rngs(0), width=2 * WIDTH))
    with pytest.raises(WeightImportError) as err:
        load_pretrained(target, "manet", path)
    assert str(err.value) == (
        f"{path}: the checkpoint holds an MA-Net of width {WIDTH} (conv1 has {WIDTH} filters), "
        f"and config.model.width={2 * WIDTH}: set --config.model.width={WIDTH}.")


def test_missing_and_unknown_tensors_are_errors(checkpoint, tmp_path):
    target = random_model(8)
    bad = broken(checkpoint, **{"layer3_2.1.bn2_2_3.running_var": None,
                                "layer5.0.conv1.weight": torch.zeros(1, 1, 3, 3)})
    with pytest.raises(WeightImportError) as err:
        load_pretrained(target, "manet", save(bad, tmp_path / "a.pth.tar"))
    assert "missing: layer3_2/1/bn2_2_3/var (8,)" in str(err.value)
    assert "not in the model: layer5/0/conv1/kernel (3, 3, 1, 1)" in str(err.value)

    bad = broken(checkpoint, **{"layer1.0.bn1.momentum_buffer": torch.zeros(8)})
    with pytest.raises(WeightImportError, match="Unknown tensor 'layer1.0.bn1.momentum_buffer'"):
        load_pretrained(target, "manet", save(bad, tmp_path / "b.pth.tar"))


def test_missing_file_is_a_clear_error(tmp_path):
    target = nnx.eval_shape(lambda: create_model("manet", num_classes=7, rngs=nnx.Rngs(0)))
    with pytest.raises(CheckpointReadError, match="does not exist.*config.init.checkpoint"):
        load_pretrained(target, "manet", tmp_path / "nowhere.pth.tar")


def test_legacy_pytorch_format_loads_to_the_same_numbers(source, tmp_path):
    """The authors asked for PyTorch 1.2, whose torch.save writes the pre-1.6 non-zip format,
    for which torch cannot list the refused classes up front."""
    legacy = wf.write_manet(source, tmp_path / "legacy", legacy=True)
    zipped = wf.write_manet(source, tmp_path / "zip")
    assert not zipfile.is_zipfile(legacy) and zipfile.is_zipfile(zipped)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(legacy, weights_only=True)
    got, want = read_checkpoint(legacy), read_checkpoint(zipped)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    _assert_backbone_loaded(source, legacy, seed=11)


def test_resnet_file_is_not_an_manet_checkpoint_in_one_line(source, tmp_path):
    """A torchvision ResNet shares conv1 / bn1 / layer1 names with MA-Net: one line saying what
    the file is, not hundreds of missing / mismatched tensors."""
    state = {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8),
             "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1), "fc.weight": torch.zeros(10, 32)}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    with pytest.raises(WeightImportError) as error:
        load_pretrained(source, "manet", path)
    assert str(error.value) == (
        f"{path}: Not an MA-Net checkpoint (expected the authors' names, e.g. "
        "'layer3_1_p1.0.cbam.ChannelGate.mlp.1.weight'); its first keys are: bn1.weight, "
        "conv1.weight, fc.weight, layer1.0.conv1.weight: give the authors' MS-Celeb-1M "
        ".pth.tar (README, 'Bring pre-trained weights'), or unset init.checkpoint to train "
        "MA-Net from scratch.")


def test_the_authors_file_converted_to_safetensors_loads(source, checkpoint, tmp_path):
    """Without PyTorch the import says to convert the file to .safetensors first; its state dict
    so converted keeps DataParallel's `module.` names, which only the PyTorch reader dropped
    ("Not an MA-Net checkpoint ...; its first keys are: module.bn1.bias, ...")."""
    from safetensors.torch import save_file

    # The authors' state_dict entry, as `save_file(torch.load(path)["state_dict"], ...)` writes it.
    save_file({"module." + k: v.contiguous() for k, v in checkpoint.items()},
              tmp_path / "manet.safetensors")
    model = random_model(seed=5)
    report = load_pretrained(model, "manet", tmp_path / "manet.safetensors")
    assert report.reinitialised == HEADS
    assert sorted(read_checkpoint(tmp_path / "manet.safetensors")) == sorted(checkpoint)
    got, want = snapshot(model), snapshot(source)
    for name in want:
        if name.split("/")[0] not in ("fc_1", "fc_2"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
