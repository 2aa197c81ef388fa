"""Pre-trained weights at a remote path (gs://...): every read goes through etils epath.

`mock_epath` maps gs://test-bucket/... onto a local folder for epath, and for epath only: a read
that bypasses epath (os.path, builtin open, np.load / safe_open / torch.load given a path string)
sees the literal 'gs://test-bucket/...' string and finds no file, so these tests fail on it. The
files are written by tests/weight_files.py (every format users bring) and loaded through the
public functions the trainer uses (cer_jax/warm_start.py): `implied_settings` and
`load_pretrained`; the result must equal loading the same file from its local path.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import weight_files as wf
from conftest import BUCKET
from etils import epath
from flax import nnx
from safetensors.torch import save_file as save_torch_file

from cer_jax.models import create_model
from cer_jax.pretrained import (
    CheckpointReadError,
    WeightImportError,
    implied_settings,
    load_pretrained,
)
from cer_jax.pretrained.readers import checkpoint_keys, read_checkpoint


def test_the_mock_serves_gs_paths_from_the_local_folder(bucket):
    """The fixture itself: epath finds a file written locally under its gs:// name, and the
    literal gs:// string names no local file (so a read bypassing epath fails)."""
    (bucket.root / "hello.txt").write_text("hi")
    remote = epath.Path(f"{BUCKET}/hello.txt")
    assert remote.is_file() and remote.read_text() == "hi"
    assert not os.path.exists(f"{BUCKET}/hello.txt")
    assert f"{BUCKET}/hello.txt" in bucket.seen


# ---------------------------------------------------------------------------------------------
# Every format: the same parameters and implied settings from gs:// as from the local path.

# model name -> create_model keyword arguments (tiny variants; abstract and filled from numpy).
_MODELS = {
    "vit": dict(variant="test/8", image_size=32, layer_norm_eps=1e-12),
    "resnet": dict(depth=18, width=8),
    "manet": dict(width=8),
}


def _model(name: str, seed: int) -> nnx.Module:
    model = nnx.eval_shape(
        lambda: create_model(name, num_classes=7, rngs=nnx.Rngs(0), **_MODELS[name]))
    return wf.randomise(model, seed)


@pytest.fixture(scope="module")
def sources():
    """A random model of each kind: what the weight files are written from."""
    return {name: _model(name, seed=1) for name in _MODELS}


def _flat(model: nnx.Module) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(var.get_value())
            for path, var in nnx.to_flat_state(nnx.state(model))}


def _load(name: str, path):
    """A fresh target (the same initial values every time) after load_pretrained from `path`."""
    target = _model(name, seed=2)
    report = load_pretrained(target, name, path, keep_head=True)
    return target, report


_ALL_FORMATS = [(name, fmt) for name, formats in wf.FORMATS.items() for fmt in sorted(formats)]


@pytest.mark.parametrize("name, fmt", _ALL_FORMATS, ids=[f"{n}-{f}" for n, f in _ALL_FORMATS])
def test_every_format_loads_from_gs_as_from_local(bucket, sources, name, fmt):
    local = wf.FORMATS[name][fmt](sources[name], bucket.root / fmt)
    remote = bucket.remote(local)
    assert remote.startswith(f"{BUCKET}/{fmt}/") and not os.path.exists(remote)

    expected, expected_report = _load(name, local)
    got, report = _load(name, epath.Path(remote))
    assert report.source == remote
    assert report.loaded and report.loaded == expected_report.loaded
    for field in ("reinitialised", "unused", "resized"):
        assert getattr(report, field) == getattr(expected_report, field), field
    want, have = _flat(expected), _flat(got)
    assert sorted(have) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(have[key], want[key], err_msg=key)

    version = wf.MANET_CODE_VERSIONS.get(fmt, "2021")
    settings = implied_settings(name, remote, manet_code_version=version)
    local_settings = implied_settings(name, local, manet_code_version=version)
    assert {k: s.value for k, s in settings.items()} == {
        k: s.value for k, s in local_settings.items()}
    if fmt == "hf_safetensors" and name == "vit":
        config = f"{BUCKET}/{fmt}/config.json"
        assert all(config in s.reason for s in settings.values()), settings
    assert sorted(checkpoint_keys(remote)) == sorted(read_checkpoint(local))
    assert any(path.startswith(f"{BUCKET}/{fmt}/") for path in bucket.seen)


# ---------------------------------------------------------------------------------------------
# The Hugging Face config.json is read from beside the remote weights.


def test_hf_vit_config_json_is_read_from_gs(bucket, sources):
    """Settings other than transformers' defaults: a config.json missed (read through the
    local file system, say) would give the defaults instead, gelu and 1e-12."""
    local = wf.write_hf_vit(sources["vit"], bucket.root / "hf", hidden_act="gelu_new",
                            layer_norm_eps=1e-5)
    remote = bucket.remote(local)
    settings = implied_settings("vit", remote)
    assert {k: s.value for k, s in settings.items()} == {"gelu_approximate": True,
                                                         "layer_norm_eps": 1e-5}
    assert f"{BUCKET}/hf/config.json hidden_act='gelu_new'" in settings["gelu_approximate"].reason
    assert f"{BUCKET}/hf/config.json" in bucket.seen


def test_hf_vit_without_config_json_on_gs_names_its_gs_location(bucket, sources):
    local = wf.write_hf_vit(sources["vit"], bucket.root / "hf")
    (local.parent / "config.json").unlink()
    settings = implied_settings("vit", bucket.remote(local))
    assert {k: s.value for k, s in settings.items()} == {"gelu_approximate": False,
                                                         "layer_norm_eps": 1e-12}
    assert f"({BUCKET}/hf/config.json is absent)" in settings["layer_norm_eps"].reason


def test_hf_resnet_config_json_of_another_network_on_gs_is_an_error(bucket, sources):
    local = wf.write_hf_resnet(sources["resnet"], bucket.root / "hf")
    config_file = local.parent / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "downsample_in_bottleneck": True}))
    with pytest.raises(WeightImportError, match="downsample_in_bottleneck=true") as error:
        implied_settings("resnet", bucket.remote(local))
    assert str(error.value).startswith(f"{BUCKET}/hf/config.json describes another network")


# ---------------------------------------------------------------------------------------------
# Readers: bfloat16 safetensors (through ml_dtypes), errors.


def test_bfloat16_safetensors_from_gs(bucket):
    tensors = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(5)}
    save_torch_file(tensors, bucket.root / "bf16.safetensors")
    remote = f"{BUCKET}/bf16.safetensors"
    got = read_checkpoint(remote)
    want = read_checkpoint(bucket.root / "bf16.safetensors")
    assert sorted(got) == sorted(want) == ["a", "b"] == checkpoint_keys(remote)
    assert got["a"].dtype == np.float32
    np.testing.assert_array_equal(got["a"], tensors["a"].float().numpy())
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("filename", ["model.safetensors", "w.npz", "manet.pth.tar"])
def test_missing_gs_file_is_a_one_line_error_naming_it(bucket, filename):
    remote = f"{BUCKET}/nowhere/{filename}"
    model = _model("vit", seed=0)
    for call in (lambda: load_pretrained(model, "vit", remote),
                 lambda: implied_settings("vit", remote),
                 lambda: read_checkpoint(epath.Path(remote))):
        with pytest.raises(CheckpointReadError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message
        assert f"Pre-trained checkpoint {remote!r} does not exist" in message
        assert "config.init.checkpoint" in message
    assert remote in bucket.seen


def test_unreadable_gs_file_names_it(bucket):
    (bucket.root / "broken.npz").write_bytes(b"not a zip")
    (bucket.root / "broken.safetensors").write_bytes(b"\xff" * 16)
    for filename in ("broken.npz", "broken.safetensors"):
        remote = f"{BUCKET}/{filename}"
        for read in (read_checkpoint, checkpoint_keys):
            with pytest.raises(CheckpointReadError, match=f"Cannot read checkpoint '{remote}'"):
                read(remote)


def test_legacy_pytorch_manet_from_gs(bucket, sources):
    """PyTorch < 1.6's non-zip format is loaded again after each refused class: every attempt
    reads the gs:// file object from its start."""
    local = wf.write_manet(sources["manet"], bucket.root / "legacy", legacy=True)
    expected, _ = _load("manet", local)
    got, report = _load("manet", bucket.remote(local))
    assert report.loaded
    want, have = _flat(expected), _flat(got)
    for key in want:
        np.testing.assert_array_equal(have[key], want[key], err_msg=key)


def test_hf_folder_on_gs_reads_its_model_safetensors_and_config(bucket, sources):
    local = wf.write_hf_vit(sources["vit"], bucket.root / "hf", hidden_act="gelu_new")
    folder = bucket.remote(local.parent)
    settings = implied_settings("vit", folder)
    assert settings["gelu_approximate"].value is True
    assert f"{BUCKET}/hf/config.json hidden_act='gelu_new'" in settings["gelu_approximate"].reason
    assert checkpoint_keys(folder) == checkpoint_keys(local)
    expected, _ = _load("vit", local)
    got, report = _load("vit", folder)
    want, have = _flat(expected), _flat(got)
    for key in want:
        np.testing.assert_array_equal(have[key], want[key], err_msg=key)
