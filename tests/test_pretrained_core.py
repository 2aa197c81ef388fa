"""Weight-import core: file readers and the name/shape-checked assignment with its report."""

import os
import sys

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import save_file

from cer_jax.pretrained import core, readers


class TinyNet(nnx.Module):
    HEAD_NAMES = ("head",)

    def __init__(self, num_classes: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4, num_classes, rngs=rngs)


def _backbone(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv/kernel": rng.normal(size=(3, 3, 3, 4)).astype(np.float32),
        "bn/scale": rng.normal(size=(4,)).astype(np.float32),
        "bn/bias": rng.normal(size=(4,)).astype(np.float32),
        "bn/mean": rng.normal(size=(4,)).astype(np.float32),
        "bn/var": rng.uniform(0.5, 2.0, size=(4,)).astype(np.float32),
    }


def test_assign_loads_backbone_and_reinitialises_head():
    model = TinyNet(5, nnx.Rngs(0))
    head_before = np.asarray(model.head.kernel[...]).copy()
    arrays = _backbone(np.random.default_rng(0))
    arrays["head/kernel"] = np.zeros((4, 1000), np.float32)  # the old 1000-way head
    arrays["head/bias"] = np.zeros((1000,), np.float32)
    report = core.assign(model, arrays, source="x.npz", head_names=TinyNet.HEAD_NAMES)
    np.testing.assert_array_equal(model.conv.kernel[...], arrays["conv/kernel"])
    np.testing.assert_array_equal(model.bn.var[...], arrays["bn/var"])
    np.testing.assert_array_equal(model.head.kernel[...], head_before)
    assert report.reinitialised == ["head/bias", "head/kernel"]
    assert sorted(report.loaded) == sorted(_backbone(np.random.default_rng(0)))
    assert "2 left at initialisation" in report.summary()


def test_assign_keep_head_when_class_count_matches():
    model = TinyNet(5, nnx.Rngs(0))
    arrays = _backbone(np.random.default_rng(1))
    arrays["head/kernel"] = np.full((4, 5), 0.5, np.float32)
    arrays["head/bias"] = np.full((5,), -1.0, np.float32)
    report = core.assign(model, arrays, source="x", head_names=("head",), keep_head=True)
    np.testing.assert_array_equal(model.head.bias[...], arrays["head/bias"])
    assert report.reinitialised == []


def test_assign_backbone_shape_mismatch_is_an_error_and_writes_nothing():
    model = TinyNet(5, nnx.Rngs(0))
    before = np.asarray(model.bn.scale[...]).copy()
    arrays = _backbone(np.random.default_rng(2))
    arrays["conv/kernel"] = np.zeros((3, 3, 3, 8), np.float32)
    with pytest.raises(core.WeightImportError) as error:
        core.assign(model, arrays, source="bad.npz", head_names=("head",))
    message = str(error.value)
    assert "bad.npz does not fit this model" in message
    assert "shape mismatch: conv/kernel is (3, 3, 3, 4) in the model, (3, 3, 3, 8)" in message
    np.testing.assert_array_equal(model.bn.scale[...], before)


def test_assign_reports_missing_and_extra_tensors():
    model = TinyNet(5, nnx.Rngs(0))
    arrays = _backbone(np.random.default_rng(3))
    del arrays["bn/mean"]
    arrays["extra/kernel"] = np.zeros((2,), np.float32)
    with pytest.raises(core.WeightImportError) as error:
        core.assign(model, arrays, source="s", head_names=("head",))
    assert "missing: bn/mean (4,)" in str(error.value)
    assert "not in the model: extra/kernel (2,)" in str(error.value)


def test_readers_npz_and_safetensors(tmp_path):
    arrays = {"a/b": np.arange(6, dtype=np.float64).reshape(2, 3), "c": np.ones(2, np.float32)}
    np.savez(tmp_path / "w.npz", **arrays)
    save_file({k: v.astype(np.float32) for k, v in arrays.items()}, tmp_path / "w.safetensors")
    for name in ("w.npz", "w.safetensors"):
        loaded = readers.read_checkpoint(tmp_path / name)
        assert set(loaded) == {"a/b", "c"}
        assert loaded["a/b"].dtype == np.float32
        np.testing.assert_array_equal(loaded["a/b"], arrays["a/b"])


def test_reader_torch_unwraps_state_dict_and_data_parallel_prefix(tmp_path):
    state = {
        "module.conv1.weight": torch.randn(2, 3),
        "module.bn.num_batches_tracked": torch.tensor(7),
    }
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "m.pth.tar")
    loaded = readers.read_checkpoint(tmp_path / "m.pth.tar")
    assert set(loaded) == {"conv1.weight", "bn.num_batches_tracked"}
    np.testing.assert_array_equal(loaded["conv1.weight"], state["module.conv1.weight"].numpy())


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(readers.CheckpointReadError, match="does not exist.*config.init.checkpoint"):
        readers.read_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(readers.CheckpointReadError, match="Unknown checkpoint format"):
        readers.read_checkpoint(tmp_path / "w.h5")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    # Not np.load's own message, which suggests allow_pickle=True.
    for read in (readers.read_checkpoint, readers.checkpoint_keys):
        with pytest.raises(readers.CheckpointReadError) as e:
            read(tmp_path / "broken.npz")
        assert str(e.value) == (
            f"Cannot read checkpoint {str(tmp_path / 'broken.npz')!r}: not a .npz file (the zip "
            "archive of arrays that numpy.savez writes).")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(readers.CheckpointReadError, match="Cannot read checkpoint .*cut.npz"):
        readers.read_checkpoint(tmp_path / "cut.npz")


def test_reader_npz_bfloat16_stored_as_void(tmp_path):
    """np.savez writes bfloat16 as 2-byte void; read back as big_vision's recover_dtype does."""
    import ml_dtypes

    values = np.array([1.5, -2.0, 3.25], ml_dtypes.bfloat16)
    np.savez(tmp_path / "w.npz", x=values)
    with np.load(tmp_path / "w.npz") as data:
        assert data["x"].dtype.kind == "V"
    loaded = readers.read_checkpoint(tmp_path / "w.npz")
    assert loaded["x"].dtype == np.float32
    np.testing.assert_array_equal(loaded["x"], [1.5, -2.0, 3.25])


def test_reader_expands_home_as_the_trainer_check_does(tmp_path, monkeypatch):
    """trainer checks `epath.Path(init.checkpoint).expanduser().is_file()`; the reader agrees."""
    monkeypatch.setenv("HOME", str(tmp_path))
    np.savez(tmp_path / "w.npz", x=np.ones(2, np.float32))
    assert readers.checkpoint_keys("~/w.npz") == ["x"]
    np.testing.assert_array_equal(readers.read_checkpoint("~/w.npz")["x"], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# PyTorch files as training scripts save them (written by torch.save).


def _state() -> dict[str, torch.Tensor]:
    return {"conv1.weight": torch.arange(6.0).reshape(2, 3), "bn.running_var": torch.ones(2)}


@pytest.mark.parametrize("entry", ["model_state", "state_dict_ema", "model_ema", "net", "module"])
def test_reader_torch_unwraps_other_training_state_entries(tmp_path, entry):
    torch.save({"epoch": 3, entry: _state(), "optimizer_state": {}}, tmp_path / "m.pth")
    loaded = readers.read_checkpoint(tmp_path / "m.pth")
    assert sorted(loaded) == ["bn.running_var", "conv1.weight"]
    np.testing.assert_array_equal(loaded["conv1.weight"], _state()["conv1.weight"].numpy())


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_reader_torch_strips_torch_compile_prefix(tmp_path, prefix):
    torch.save({prefix + k: v for k, v in _state().items()}, tmp_path / "m.pth")
    assert sorted(readers.read_checkpoint(tmp_path / "m.pth")) == ["bn.running_var",
                                                                    "conv1.weight"]


@pytest.mark.parametrize("prefix", ["model.", "model._orig_mod.", "module.model."])
def test_reader_torch_strips_a_lightning_module_prefix(tmp_path, prefix):
    """A Lightning .ckpt: the LightningModule's state dict, its network in `self.model`. Before:
    the keys kept `model.`, and the import said 'Not a ResNet/ViT checkpoint'."""
    state = {prefix + k: v for k, v in _state().items()}
    torch.save({"epoch": 3, "global_step": 90, "pytorch-lightning_version": "2.4.0",
                "state_dict": state, "optimizer_states": [], "lr_schedulers": []},
               tmp_path / "last.ckpt")
    assert sorted(readers.read_checkpoint(tmp_path / "last.ckpt")) == ["bn.running_var",
                                                                        "conv1.weight"]



def test_reader_torch_keeps_model_prefix_that_not_every_key_has(tmp_path):
    """Then `model.` is a name in the network itself, kept."""
    torch.save({"model.conv1.weight": torch.ones(2), "head.weight": torch.ones(2)},
               tmp_path / "m.pth")
    assert sorted(readers.read_checkpoint(tmp_path / "m.pth")) == ["head.weight",
                                                                    "model.conv1.weight"]


def test_reader_torch_without_a_state_dict_names_its_entries(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"epoch": 3, "weights": _state(), "optimizer_state": {}}, path)
    for read in (readers.read_checkpoint, readers.checkpoint_keys):
        with pytest.raises(readers.CheckpointReadError) as error:
            read(path)
        assert str(error.value) == (
            f"{str(path)!r} holds no state dict (its top-level entries: epoch, weights, "
            "optimizer_state); save the model's weights with torch.save(model.state_dict(), "
            "path).")


def test_reader_torch_whole_pickled_model_names_its_class(tmp_path):
    torch.save(torch.nn.Linear(3, 2), tmp_path / "whole.pth")
    with pytest.raises(readers.CheckpointReadError) as error:
        readers.read_checkpoint(tmp_path / "whole.pth")
    assert str(error.value) == (
        f"{str(tmp_path / 'whole.pth')!r} holds a pickled torch.nn.modules.linear.Linear object "
        "(a whole model?), not a state dict; save the weights with "
        "torch.save(model.state_dict(), path).")


# ---------------------------------------------------------------------------------------------
# A folder for a path: its one weights file.


def test_reader_folder_with_one_weights_file_reads_it(tmp_path):
    np.savez(tmp_path / "w.npz", x=np.ones(2, np.float32))
    (tmp_path / "README.txt").write_text("downloaded from ...")
    assert readers.checkpoint_keys(tmp_path) == ["x"]
    np.testing.assert_array_equal(readers.read_checkpoint(tmp_path)["x"], [1.0, 1.0])


def test_reader_folder_prefers_transformers_file(tmp_path):
    save_file({"a": np.ones(2, np.float32)}, tmp_path / "model.safetensors")
    torch.save({"b": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    assert readers.checkpoint_keys(tmp_path) == ["a"]


def test_reader_folder_without_one_weights_file_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones(2, np.float32))
    np.savez(tmp_path / "b.npz", x=np.ones(2, np.float32))
    with pytest.raises(readers.CheckpointReadError) as error:
        readers.read_checkpoint(tmp_path)
    assert str(error.value) == (
        f"Pre-trained checkpoint {str(tmp_path)!r} is a directory; pass the weights file in it "
        "(found: a.npz, b.npz).")


def test_reader_hub_flax_or_tensorflow_weights_say_to_download_model_safetensors(tmp_path):
    """A Hub download of the Flax weights alone (what a JAX user reaches for): the folder said
    "pass the weights file in it (found: config.json, flax_model.msgpack)", which then was an
    unknown format; each now says no weights cer_jax reads are there, and which file to get."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "flax_model.msgpack").write_bytes(b"\x80")
    formats = (".npz (big_vision / AugReg), .safetensors (Hugging Face / timm) or a PyTorch file "
               f"({', '.join(readers.TORCH_SUFFIXES)})")
    hint = (" A Hugging Face repository's Flax or TensorFlow weights are not read: download its "
            "model.safetensors.")
    for read in (readers.read_checkpoint, readers.checkpoint_keys):
        with pytest.raises(readers.CheckpointReadError) as folder:
            read(tmp_path)
        assert str(folder.value) == (
            f"Pre-trained checkpoint {str(tmp_path)!r} is a directory without weights cer_jax "
            f"reads (found: config.json, flax_model.msgpack); expected {formats}." + hint)
        with pytest.raises(readers.CheckpointReadError) as file:
            read(tmp_path / "flax_model.msgpack")
        assert str(file.value) == (f"Unknown checkpoint format for "
                                   f"{str(tmp_path / 'flax_model.msgpack')!r}: expected {formats}."
                                   + hint)
    (tmp_path / "resnet50_keras.h5").write_bytes(b"\x89HDF")  # not a Hub file: no Hub advice
    with pytest.raises(readers.CheckpointReadError) as keras:
        readers.read_checkpoint(tmp_path / "resnet50_keras.h5")
    assert str(keras.value).endswith(f"expected {formats}.")


def test_reader_hugging_face_cache_folder_names_its_snapshots(tmp_path):
    """`~/.cache/huggingface/hub/models--org--name` holds the weights in snapshots/<revision>/."""
    root = tmp_path / "models--google--vit-base-patch16-224"
    for folder in ("blobs", "refs", "snapshots/3f49326e", "snapshots/a1b2c3d4"):
        (root / folder).mkdir(parents=True)
    with pytest.raises(readers.CheckpointReadError) as error:
        readers.read_checkpoint(root)
    assert str(error.value) == (
        f"Pre-trained checkpoint {str(root)!r} is a Hugging Face cache folder; pass the folder of "
        f"one revision in it, {root}/snapshots/REVISION (found: 3f49326e, a1b2c3d4).")


# ---------------------------------------------------------------------------------------------
# keep_head with another class count.


def test_assign_keep_head_of_another_class_count_warns_with_both_shapes(caplog):
    model = TinyNet(5, nnx.Rngs(0))
    arrays = _backbone(np.random.default_rng(4))
    arrays["head/kernel"] = np.zeros((4, 10), np.float32)
    arrays["head/bias"] = np.zeros((10,), np.float32)
    with caplog.at_level("WARNING", logger="cer_jax.pretrained.core"):
        report = core.assign(model, arrays, source="w.npz", head_names=("head",), keep_head=True)
    assert report.reinitialised == ["head/bias", "head/kernel"]
    assert caplog.messages == [
        "w.npz: keep_head is set, but the head has another class count, so it is left at "
        "initialisation: head/bias (10,) in the checkpoint, (5,) in the model; head/kernel "
        "(4, 10) in the checkpoint, (4, 5) in the model."]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cer_jax.pretrained.core"):
        core.assign(TinyNet(5, nnx.Rngs(0)), arrays, source="w.npz", head_names=("head",))
    assert caplog.messages == []  # keep_head not asked for: a new head is what was wanted


def test_reader_pytorch_file_empty_cut_short_or_not_pytorch_is_one_line(tmp_path):
    """An interrupted download or a saved error page: one line, not torch's EOFError traceback
    or its advice to load with weights_only=False (which runs the file's code)."""
    torch.save(_state(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "legacy.pth").read_bytes()[:100])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "page.bin").write_bytes(b"<!DOCTYPE html><html>404</html>")
    expected = {
        "cut.pth": "the file ends early (an interrupted download or copy?); download it again.",
        "empty.pth": "not a PyTorch file (it is empty; torch.save writes a zip archive or a "
                     "pickle); download it again.",
        "page.bin": "not a PyTorch file (it starts with b'<!DOCTYPE html><'; torch.save writes a "
                    "zip archive or a pickle); download it again.",
    }
    for name, reason in expected.items():
        for read in (readers.read_checkpoint, readers.checkpoint_keys):
            with pytest.raises(readers.CheckpointReadError) as e:
                read(tmp_path / name)
            assert str(e.value) == f"Cannot read checkpoint {str(tmp_path / name)!r}: {reason}"
    assert set(readers.read_checkpoint(tmp_path / "legacy.pth")) == set(_state())


def test_reader_legacy_pytorch_file_cut_anywhere_is_one_line(tmp_path):
    """A legacy (PyTorch < 1.6, as the MA-Net release) file cut inside its pickle made torch's
    weights-only unpickler fail with a bare IndexError or struct.error traceback, and cut in its
    storages with "unexpected EOF ... might be corrupted" and no fix: one line at every length."""
    state = {f"module.layer{i}.conv{j}.weight": torch.randn(2, 2) for i in range(20)
             for j in range(3)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "legacy.pth.tar",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "legacy.pth.tar").read_bytes()
    cut = tmp_path / "cut.pth.tar"
    for length in range(1, len(data), 13):
        cut.write_bytes(data[:length])
        with pytest.raises(readers.CheckpointReadError) as e:
            readers.read_checkpoint(cut)
        assert str(e.value) == (f"Cannot read checkpoint {str(cut)!r}: the file ends early (an "
                                "interrupted download or copy?); download it again."), length
    assert len(readers.read_checkpoint(tmp_path / "legacy.pth.tar")) == len(state)


def _write_weights(path) -> None:
    arrays = {f"layer{i}.weight": np.full((64, 64), i, np.float32) for i in range(8)}
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".safetensors":
        save_file(arrays, path)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)  # zip format


@pytest.mark.parametrize("name", ["resnet50.pth", "pytorch_model.bin", "ViT-B_16.npz",
                                  "model.safetensors"])
@pytest.mark.parametrize("keep", [100, 0.5, -10])  # kept: 100 bytes, half, all but 10
def test_reader_zip_or_safetensors_cut_short_is_one_line(tmp_path, name, keep):
    """An interrupted download of a zip-format file (torch.save since PyTorch 1.6, np.savez) or
    of a safetensors header: was torch's "[Errno 22] Invalid argument", np.load's "File is not a
    zip file" and "not a safetensors file (Unterminated string ...)"."""
    _write_weights(tmp_path / name)
    data = (tmp_path / name).read_bytes()
    cut = tmp_path / "cut" / name
    cut.parent.mkdir()
    cut.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    header_whole = name.endswith(".safetensors") and keep != 100
    for read in (readers.read_checkpoint, readers.checkpoint_keys):
        if read is readers.checkpoint_keys and header_whole:
            continue  # its names are read from the header alone; reading its tensors fails
        with pytest.raises(readers.CheckpointReadError) as e:
            read(cut)
        assert str(e.value) == (f"Cannot read checkpoint {str(cut)!r}: the file ends early (an "
                                "interrupted download or copy?); download it again.")
    assert len(readers.read_checkpoint(tmp_path / name)) == 8


def test_reader_torchscript_archive_says_how_to_get_its_state_dict(tmp_path):
    """A model exported with torch.jit.save: was torch's paragraph advising to load it with
    weights_only=False (which runs the file's code and gives a module, not weights)."""
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 4)), tmp_path / "model.pt")
    for read in (readers.read_checkpoint, readers.checkpoint_keys):
        with pytest.raises(readers.CheckpointReadError) as e:
            read(tmp_path / "model.pt")
        assert str(e.value) == (
            f"{str(tmp_path / 'model.pt')!r} is a TorchScript archive (torch.jit.save), not a "
            "state dict; save its weights with torch.save(torch.jit.load(path).state_dict(), "
            "'weights.pth') and pass that file.")
    torch.save(torch.jit.load(tmp_path / "model.pt").state_dict(), tmp_path / "weights.pth")
    assert sorted(readers.read_checkpoint(tmp_path / "weights.pth")) == ["bias", "weight"]


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "ViT-B_16.npz"])
def test_reader_git_lfs_pointer_says_to_fetch_the_weights(tmp_path, name):
    """A Hub repository cloned without Git LFS holds pointer files in place of the weights."""
    (tmp_path / name).write_text("version https://git-lfs.github.com/spec/v1\n"
                                 "oid sha256:0123abcd\nsize 346293852\n")
    for read in (readers.read_checkpoint, readers.checkpoint_keys):
        with pytest.raises(readers.CheckpointReadError) as e:
            read(tmp_path)  # the folder, as from a clone
        assert str(e.value) == (
            f"{str(tmp_path / name)!r} is a Git LFS pointer, not the weights (a repository cloned "
            "without Git LFS): run `git lfs pull` in the clone, or download the file itself "
            "(e.g. `huggingface-cli download`).")


def test_assign_lists_at_most_twenty_problems_then_counts_the_rest():
    """A file of another network would otherwise list every one of its hundreds of tensors."""
    rng = np.random.default_rng(0)
    arrays = {**_backbone(rng), **{f"other/{i}/kernel": np.zeros(2, np.float32)
                                   for i in range(30)}}
    with pytest.raises(core.WeightImportError) as e:
        core.assign(TinyNet(7, nnx.Rngs(0)), arrays, source="other.pth", head_names=("head",))
    lines = str(e.value).splitlines()
    assert lines[0].startswith("other.pth does not fit this model (30 problems;")
    assert len(lines) == 1 + 20 + 1
    assert lines[-1] == "  ... and 10 more"


def test_reader_bfloat16_safetensors_needs_no_pytorch(tmp_path, monkeypatch):
    """README: PyTorch is needed only for .pth files; a bf16 safetensors is read with ml_dtypes."""
    from safetensors.torch import save_file as save_torch_file

    values = {"w": torch.tensor([[1.5, -2.0], [3.25, 0.0]], dtype=torch.bfloat16),
              "b": torch.tensor([0.1, 0.2], dtype=torch.float32),
              "n": torch.tensor(7, dtype=torch.int64)}
    save_torch_file(values, tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "torch", None)  # as without PyTorch installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    loaded = readers.read_checkpoint(tmp_path / "w.safetensors")
    assert loaded["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["w"], [[1.5, -2.0], [3.25, 0.0]])
    np.testing.assert_array_equal(loaded["b"], np.float32([0.1, 0.2]))
    assert loaded["n"] == 7 and loaded["n"].shape == ()


def test_reader_safetensors_holds_the_file_once_and_names_a_cut_file(tmp_path):
    """A 40 MB float32 file: at most its own size in memory while read (safetensors.numpy.load
    copied every tensor out of the bytes read, twice the file); cut short, one line saying so."""
    import tracemalloc

    tensors = {f"t{i}": np.full((1024, 1024), i, np.float32) for i in range(10)}
    save_file(tensors, tmp_path / "w.safetensors")
    size = (tmp_path / "w.safetensors").stat().st_size
    tracemalloc.start()
    try:
        loaded = readers.read_checkpoint(tmp_path / "w.safetensors")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.2 * size, (peak, size)
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(readers.CheckpointReadError) as e:
        readers.read_checkpoint(tmp_path / "cut.safetensors")
    assert str(e.value) == (
        f"Cannot read checkpoint {str(tmp_path / 'cut.safetensors')!r}: the file ends early (an "
        "interrupted download or copy?); download it again.")


def test_weights_checked_then_loaded_are_read_once_unless_the_file_changed(tmp_path, monkeypatch):
    """A run start checks its weights against the model before the data work and loads them
    after it: the file was read whole twice (on gs://, downloaded twice)."""
    import weight_files as wf

    from cer_jax import pretrained
    from cer_jax.models import create_model

    def vit(seed=None):
        model = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="mu/8",
                             image_size=32)
        return model if seed is None else wf.randomise(model, seed=seed)

    def check_then_load(replace_with=None):
        pretrained.check_pretrained(nnx.eval_shape(vit), "vit", path)
        if replace_with is not None:  # another file at the same path after the check
            wf.write_augreg_npz(replace_with, tmp_path)
            os.utime(path, (1, 1))
        target = vit()
        pretrained.load_pretrained(target, "vit", path)
        return target.embedding.kernel.get_value()

    reads = []
    dispatch = readers._dispatch
    monkeypatch.setattr(readers, "_dispatch", lambda path, *, keys_only: (
        reads.append(keys_only), dispatch(path, keys_only=keys_only))[1])
    first, second = vit(seed=1), vit(seed=2)
    path = wf.write_augreg_npz(first, tmp_path)
    np.testing.assert_array_equal(check_then_load(), first.embedding.kernel.get_value())
    assert reads == [False]
    np.testing.assert_array_equal(check_then_load(replace_with=second),
                                  second.embedding.kernel.get_value())
    assert reads == [False, False, False]
