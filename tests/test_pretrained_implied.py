"""`implied_settings`: what each pre-trained file format implies about model settings that change
the computed function without changing a shape; errors name the file or the config key."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch
import weight_files as wf
from flax import nnx

from cer_jax.models import create_model, manet
from cer_jax.pretrained import (
    CheckpointReadError,
    Setting,
    WeightImportError,
    implied_settings,
    load_pretrained,
    model_settings,
)
from cer_jax.pretrained.implied import naming_the_file
from cer_jax.pretrained.readers import read_checkpoint


def _values(settings: dict[str, Setting]) -> dict:
    assert all(isinstance(s, Setting) and s.reason for s in settings.values())
    return {k: s.value for k, s in settings.items()}


@pytest.fixture(scope="module")
def vit():
    model = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=32,
                         layer_norm_eps=1e-12)
    return wf.randomise(model)


@pytest.fixture(scope="module")
def hf_vit(vit, tmp_path_factory):
    return wf.write_hf_vit(vit, tmp_path_factory.mktemp("hf"))


@pytest.mark.parametrize("fmt", sorted(set(wf.VIT_FORMATS) - {"hf_safetensors"}))
def test_vit_npz_and_timm(vit, tmp_path, fmt):
    settings = implied_settings("vit", wf.VIT_FORMATS[fmt](vit, tmp_path))
    if fmt.endswith("npz"):  # big_vision / vision_transformer: flax nn.gelu, nn.LayerNorm defaults
        assert _values(settings) == {"gelu_approximate": True, "layer_norm_eps": 1e-6}
        assert "big_vision" in settings["gelu_approximate"].reason
    else:
        assert _values(settings) == {"gelu_approximate": False, "layer_norm_eps": 1e-6}
        assert "timm" in settings["gelu_approximate"].reason


def test_vit_hf_reads_config_json(vit, hf_vit):
    settings = implied_settings("vit", hf_vit)
    assert _values(settings) == {"gelu_approximate": False, "layer_norm_eps": 1e-12}
    assert "config.json hidden_act='gelu'" in settings["gelu_approximate"].reason
    assert _values(settings) == model_settings(vit, "vit")  # the writer's config is the model's


def _hf_copy(hf_vit, directory, config: dict | None):
    directory.mkdir()
    shutil.copy(hf_vit, directory / "model.safetensors")
    if config is not None:
        original = json.loads((hf_vit.parent / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**original, **config}))
    return directory / "model.safetensors"


@pytest.mark.parametrize("act, approximate", [
    ("gelu", False), ("gelu_new", True), ("gelu_pytorch_tanh", True), ("gelu_fast", True),
])
def test_vit_hf_hidden_act(hf_vit, tmp_path, act, approximate):
    path = _hf_copy(hf_vit, tmp_path / "hf", {"hidden_act": act, "layer_norm_eps": 1e-5})
    assert _values(implied_settings("vit", path)) == {"gelu_approximate": approximate,
                                                      "layer_norm_eps": 1e-5}


def test_vit_hf_without_config_json_uses_transformers_defaults(hf_vit, tmp_path):
    settings = implied_settings("vit", _hf_copy(hf_vit, tmp_path / "hf", None))
    assert _values(settings) == {"gelu_approximate": False, "layer_norm_eps": 1e-12}
    assert "without a config.json" in settings["layer_norm_eps"].reason


def test_vit_hf_activation_this_vit_cannot_compute_is_an_error(hf_vit, tmp_path):
    path = _hf_copy(hf_vit, tmp_path / "hf", {"hidden_act": "quick_gelu"})
    with pytest.raises(WeightImportError, match="hidden_act='quick_gelu'"):
        implied_settings("vit", path)


def test_vit_hf_tanh_file_loads_into_the_network_it_names(vit, tmp_path):
    """A transformers ViT saved with a tanh GELU: implied settings build the same network."""
    reference = wf.vit_hf_reference(vit, hidden_act="gelu_new")
    reference.save_pretrained(tmp_path)
    implied = _values(implied_settings("vit", tmp_path / "model.safetensors"))
    assert implied == {"gelu_approximate": True, "layer_norm_eps": 1e-12}
    model = create_model("vit", num_classes=7, rngs=nnx.Rngs(1), variant="test/8", image_size=32,
                         **implied)
    load_pretrained(model, "vit", tmp_path / "model.safetensors", keep_head=True)
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits
    np.testing.assert_allclose(model(images).logits, expected.numpy(), atol=1e-5, rtol=0)


def test_npz_prefixes_select_the_parameters(vit, tmp_path):
    """big_vision's load_params: `params/` subtree, else `opt/target/`; optimizer state unread."""
    for fmt in ("big_vision_params_npz", "big_vision_opt_target_npz"):
        path = wf.VIT_FORMATS[fmt](vit, tmp_path / fmt)
        with np.load(path) as data:
            assert any(k.startswith("opt/") and "target" not in k for k in data.files)
        plain = read_checkpoint(wf.write_big_vision_npz(vit, tmp_path / f"{fmt}_plain"))
        loaded = read_checkpoint(path)
        assert sorted(loaded) == sorted(plain)
    np.savez(tmp_path / "odd.npz", **{"opt/state/step": np.zeros(())})
    with pytest.raises(CheckpointReadError, match="no 'opt/target/' parameters"):
        implied_settings("vit", tmp_path / "odd.npz")


@pytest.fixture(scope="module")
def resnet():
    return wf.randomise(nnx.eval_shape(lambda: create_model(
        "resnet", num_classes=7, rngs=nnx.Rngs(0), depth=18, width=8)))


@pytest.mark.parametrize("fmt", sorted(wf.RESNET_FORMATS))
def test_resnet_implies_nothing(resnet, tmp_path, fmt):
    assert implied_settings("resnet", wf.RESNET_FORMATS[fmt](resnet, tmp_path)) == {}


def test_resnet_hf_config_of_another_network_is_an_error(resnet, tmp_path):
    path = wf.write_hf_resnet(resnet, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "downsample_in_bottleneck": True}))
    with pytest.raises(WeightImportError, match="downsample_in_bottleneck=true"):
        implied_settings("resnet", path)


def test_manet_order_follows_the_code_version(tmp_path):
    path = wf.save_authors_checkpoint({"conv1.weight": torch.zeros(8, 3, 7, 7)},
                                      tmp_path / "manet.pth.tar")
    assert _values(implied_settings("manet", path)) == {"path_b_order": "forward"}
    for fmt, version in wf.MANET_CODE_VERSIONS.items():
        expected = {"2021": "forward", "2023": "reverse"}[version]
        settings = implied_settings("manet", path, manet_code_version=version)
        assert _values(settings) == {"path_b_order": expected}, fmt
        assert version in settings["path_b_order"].reason
    with pytest.raises(ValueError, match=r"code version '2022' \(config key "
                                         r"init\.manet_code_version\)"):
        implied_settings("manet", path, manet_code_version="2022")


def test_manet_default_order_is_the_published_weights():
    for fn in (manet.create, manet.MANet.__init__):
        assert inspect.signature(fn).parameters["path_b_order"].default == "forward"


def test_unknown_files_give_load_pretrained_errors(vit, tmp_path):
    (tmp_path / "w.h5").write_bytes(b"x")
    for model_name in ("vit", "resnet", "manet"):
        with pytest.raises(CheckpointReadError, match="Unknown checkpoint format"):
            implied_settings(model_name, tmp_path / "w.h5")
        with pytest.raises(CheckpointReadError, match="does not exist"):
            implied_settings(model_name, tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", **{"conv1/kernel": np.zeros(3)})
    with pytest.raises(WeightImportError, match="Not a ViT checkpoint") as implied:
        implied_settings("vit", tmp_path / "other.npz")
    with pytest.raises(WeightImportError, match="Not a ViT checkpoint") as loaded:
        load_pretrained(vit, "vit", tmp_path / "other.npz")
    assert str(implied.value) == str(loaded.value)
    with pytest.raises(ValueError, match="config key model.name"):
        implied_settings("vgg", tmp_path / "other.npz")


def test_converter_errors_name_the_file_once(tmp_path):
    """Converters see tensors, not files: load_pretrained and implied_settings add the path."""
    path = tmp_path / "other.npz"
    np.savez(path, **{"Transformer/x": np.zeros(3)})
    resnet = nnx.eval_shape(
        lambda: create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=18, width=8))
    want = (f"{path}: Not a ResNet checkpoint this importer knows (expected torchvision / timm "
            "names like 'conv1.weight', 'layer1.0.conv1.weight' or Hugging Face "
            "'resnet.embedder...'); its first keys are: Transformer/x")
    for call in (lambda: implied_settings("resnet", path),
                 lambda: load_pretrained(resnet, "resnet", path)):
        with pytest.raises(WeightImportError) as error:
            call()
        assert str(error.value) == want


def test_naming_the_file_keeps_a_message_that_names_it():
    with pytest.raises(WeightImportError) as error, naming_the_file("/w/model.npz"):
        raise WeightImportError("/w/model.npz does not fit this model")
    assert str(error.value) == "/w/model.npz does not fit this model"


def test_hf_folder_reads_its_model_safetensors_and_config(vit, tmp_path):
    """A save_pretrained / Hub snapshot folder given for the file: the same weights and the
    settings of its config.json, not transformers' defaults."""
    path = wf.write_hf_vit(vit, tmp_path, hidden_act="gelu_new", layer_norm_eps=1e-6)
    settings = implied_settings("vit", tmp_path)
    assert _values(settings) == _values(implied_settings("vit", path)) == {
        "gelu_approximate": True, "layer_norm_eps": 1e-6}
    assert f"{tmp_path / 'config.json'} hidden_act='gelu_new'" in settings[
        "gelu_approximate"].reason
    got, want = read_checkpoint(tmp_path), read_checkpoint(path)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_sharded_hf_checkpoint_is_a_one_line_error(vit, tmp_path):
    wf.vit_hf_reference(vit).save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-0000*-of-*.safetensors"))[0]
    index = tmp_path / "model.safetensors.index.json"
    assert index.is_file()
    for path, shown in ((shard, shard), (index, index), (tmp_path, index)):
        for call in (implied_settings, lambda name, p: load_pretrained(vit, name, p)):
            with pytest.raises(CheckpointReadError) as error:
                call("vit", path)
            assert str(error.value) == (
                f"Pre-trained checkpoint {str(shown)!r} belongs to a sharded Hugging Face "
                f"checkpoint, which cer_jax does not read: merge the parts in {str(tmp_path)!r} "
                "into one file (load the folder with transformers and save it with a "
                "max_shard_size above the model's size), and pass that model.safetensors.")


# ---------------------------------------------------------------------------------------------
# The input normalisation a file's network was pre-trained with.


def _normalization_warnings(caplog, model_name: str, path, normalization: str) -> list[str]:
    from cer_jax import warm_start
    from cer_jax.config_loading import load_config

    config = load_config({"vit": "configs/vit.py", "manet": "configs/manet.py"}[model_name])
    config.init.checkpoint = str(path)
    config.input.normalization = normalization
    caplog.clear()
    with caplog.at_level("WARNING"):
        warm_start.check_input_normalization(config)
    return [r.getMessage() for r in caplog.records if "pre-trained on inputs" in r.getMessage()]


def test_a_file_pretrained_on_other_inputs_than_the_config_feeds_warns(vit, hf_vit, tmp_path,
                                                                        caplog):
    """DeiT's Hugging Face files (ImageNet mean/std, in the preprocessor_config.json that
    transformers' ViTImageProcessor writes) fed the ViT config's [-1, 1]; an AugReg .npz fed
    ImageNet mean/std (the follow-up recipe): a warning naming both and the fix."""
    from transformers import ViTImageProcessor

    deit = _hf_copy(hf_vit, tmp_path / "deit", {})
    ViTImageProcessor(image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(deit.parent)
    (warning,) = _normalization_warnings(caplog, "vit", deit, "minus_one_one")
    assert warning.startswith(
        f"init.checkpoint={deit} was pre-trained on inputs normalised with mean (0.485, 0.456, "
        f"0.406) and std (0.229, 0.224, 0.225) ({deit.parent}/preprocessor_config.json sets "
        "image_mean/image_std), and this config feeds it input.normalization='minus_one_one', "
        "mean (0.5, 0.5, 0.5) and std (0.5, 0.5, 0.5)")
    assert warning.endswith("set --config.input.normalization=imagenet unless that is meant.")
    assert _normalization_warnings(caplog, "vit", deit, "imagenet") == []

    npz = wf.VIT_FORMATS["augreg_npz"](vit, tmp_path / "npz")
    (warning,) = _normalization_warnings(caplog, "vit", npz, "imagenet")
    assert "set --config.input.normalization=minus_one_one" in warning
    assert _normalization_warnings(caplog, "vit", npz, "minus_one_one") == []
    # The folder holding it, which the reader takes for its one weights file, warns alike (it
    # said nothing: the path did not end in .npz).
    (warning,) = _normalization_warnings(caplog, "vit", npz.parent, "imagenet")
    assert "set --config.input.normalization=minus_one_one" in warning

    timm = _hf_copy(hf_vit, tmp_path / "timm", None)
    (timm.parent / "config.json").write_text(json.dumps({
        "architecture": "vit_base_patch16_224",
        "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    (warning,) = _normalization_warnings(caplog, "vit", timm, "unit")
    assert "set --config.input.normalization=minus_one_one" in warning

    # Nothing said where nothing is known: a safetensors file alone.
    alone = _hf_copy(hf_vit, tmp_path / "alone", None)
    assert _normalization_warnings(caplog, "vit", alone, "imagenet") == []


# ---------------------------------------------------------------------------------------------
# init.keep_head with a file whose config.json names its head's classes.

RAFDB_BASIC = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
# A FER2013-trained ViT on the Hub (e.g. trpakov/vit-face-expression): 7 classes, another order.
FER2013 = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _kept_head_warnings(caplog, path, keep_head: bool = True) -> list[str]:
    from cer_jax import warm_start
    from cer_jax.config_loading import load_config

    config = load_config("configs/vit.py")
    config.init.checkpoint, config.init.keep_head = str(path), keep_head
    caplog.clear()
    with caplog.at_level("WARNING"):
        warm_start.check_kept_head(config, RAFDB_BASIC)
    return [r.getMessage() for r in caplog.records if "keep_head" in r.getMessage()]


def test_keep_head_of_a_hub_model_of_other_classes_warns(hf_vit, tmp_path, caplog):
    """A Hub FER model's head has RAF-DB basic's shape (7 classes) in another order: kept, it
    started off predicting other classes, silently (init.workdir's class names were checked;
    a file's config.json id2label was not)."""
    id2label = {str(i): name for i, name in enumerate(FER2013)}
    fer = _hf_copy(hf_vit, tmp_path / "fer", {"id2label": id2label})
    (warning,) = _kept_head_warnings(caplog, fer)
    assert warning == (
        f"init.keep_head=True keeps the head of init.checkpoint={fer}, whose config.json names "
        f"its classes {FER2013}, and this dataset's are {RAFDB_BASIC}: unless these are the same "
        "classes in the same order under other names, the kept head starts off predicting "
        "other classes; set --config.init.keep_head=False to learn a new head.")
    assert _kept_head_warnings(caplog, fer, keep_head=False) == []
    shuffled = _hf_copy(hf_vit, tmp_path / "shuffled", {"id2label": dict(
        enumerate(name.lower() for name in RAFDB_BASIC[::-1]))})
    (warning,) = _kept_head_warnings(caplog, shuffled)
    assert ": the same names in another order, the kept head starts off" in warning
    same = _hf_copy(hf_vit, tmp_path / "same", {"id2label": dict(enumerate(RAFDB_BASIC))})
    placeholders = _hf_copy(hf_vit, tmp_path / "placeholders", {"id2label": {
        str(i): f"LABEL_{i}" for i in range(7)}})
    other_count = _hf_copy(hf_vit, tmp_path / "other_count", {"id2label": {"0": "cat"}})
    for path in (same, placeholders, other_count):  # nothing to say (another count: a new head)
        assert _kept_head_warnings(caplog, path) == []
