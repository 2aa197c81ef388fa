"""A run checks everything it will read before it trains: bad images, empty classes and a workdir
of another run stop it at once, with one message that names the file or key, and cost nothing."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from conftest import smoke_config
from PIL import Image

from cer_jax import checkpointing, trainer
from cer_jax.data import DataConfigError

CLASSES = ("calm", "cross", "glad")


def _folder(root, counts: dict[str, dict[str, int]]) -> None:
    """root/<split>/<class>/<i>.png, small random RGB images."""
    rng = np.random.default_rng(0)
    for split, per_class in counts.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class.get(name, 0)):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def _config(tmp_path, **overrides):
    return smoke_config("resnet50", tmp_path / "cache", **{
        "dataset.synthetic": False, "dataset.name": "folder",
        "dataset.folder": str(tmp_path / "faces"), **overrides,
    })


def _fails_before_training(config, workdir, pattern):
    with pytest.raises(DataConfigError, match=pattern):
        trainer.train_and_evaluate(config, str(workdir))
    assert not workdir.exists() or not os.listdir(workdir)


def _saved_run(config, workdir) -> None:
    """A workdir as a run leaves it after its first save: config.json and a committed step
    folder (a workdir without one starts anew with any config)."""
    checkpointing.save_config(config, str(workdir))
    (workdir / "checkpoints" / "1").mkdir(parents=True)


FULL = {"train_fit": {"calm": 4, "cross": 4, "glad": 4}, "validation": {"calm": 2, "glad": 2},
        "test": {"calm": 2, "cross": 2, "glad": 2}}


def test_a_corrupt_test_image_stops_the_run_before_any_training(tmp_path):
    _folder(tmp_path / "faces", FULL)
    (tmp_path / "faces" / "test" / "glad" / "1.png").write_bytes(b"\x89PNG truncated")
    (tmp_path / "faces" / "test" / "cross" / "0.png").write_bytes(b"")
    _fails_before_training(
        _config(tmp_path), tmp_path / "run",
        r"2 file\(s\) of split 'test' cannot be decoded as images: .*test/(cross/0|glad/1)\.png",
    )


def test_a_class_without_training_images_is_refused_unless_allowed(tmp_path, caplog):
    counts = {**FULL, "train_fit": {"calm": 4, "glad": 4}}
    _folder(tmp_path / "faces", counts)
    (tmp_path / "faces" / "train_fit" / "calm" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        _fails_before_training(
            _config(tmp_path), tmp_path / "run",
            r"Class\(es\) 'cross' have no examples in the training split 'train_fit'.*"
            r"--config\.dataset\.allow_empty_classes=True",
        )
    # The skipped file is counted and named in the log.
    assert "1 file(s) of split 'train_fit' skipped" in caplog.text
    assert "calm/notes.txt" in caplog.text

    from cer_jax.data import pipeline

    config = _config(tmp_path, **{"dataset.allow_empty_classes": True})
    info = pipeline.get_dataset_info(config)
    pipeline.validate_splits(config, info, ["train_fit", "validation", "test"])  # no error


def test_an_empty_split_is_refused_before_any_work(tmp_path):
    """A TFDS dataset may hold an empty split (a folder dataset refuses one when listed):
    evaluating it ended in a traceback from the metrics of no example."""
    import dataclasses

    from cer_jax.data import pipeline

    _folder(tmp_path / "faces", FULL)
    config = _config(tmp_path)
    info = pipeline.get_dataset_info(config)
    empty = dataclasses.replace(info, split_sizes={**info.split_sizes, "validation": 0})
    with pytest.raises(DataConfigError) as error:
        pipeline.validate_splits(config, empty, ["train_fit", "validation", "test"])
    assert str(error.value) == (
        f"Split 'validation' of {info.name} has no examples: drop it from "
        "config.dataset.train_split / eval_splits / export.splits, or rebuild the dataset "
        "with examples in it.")


def test_a_workdir_of_another_model_is_refused_naming_the_keys(tmp_path):
    workdir = tmp_path / "run"
    other = smoke_config("manet", tmp_path / "cache")
    _saved_run(other, workdir)
    config = smoke_config("resnet50", tmp_path / "cache")
    with pytest.raises(checkpointing.WorkdirError) as error:
        trainer.train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert "member='manet' there, 'resnet50' here" in message
    assert "model.name='manet' there, 'resnet' here" in message
    assert message.endswith("Resume with the settings it was trained with, use a new "
                            "--workdir, or delete this one to start over.")
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]


def test_an_image_folder_spelt_another_way_is_the_same_run(tmp_path, monkeypatch):
    """A trailing slash, a relative path or ~ name the same folder: the run resumes."""
    workdir = tmp_path / "run"
    faces = tmp_path / "faces"
    _saved_run(_config(tmp_path), workdir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for spelling in (f"{faces}/", "faces", "./faces/", "~/faces"):
        checkpointing.check_same_run(_config(tmp_path, **{"dataset.folder": spelling}),
                                     str(workdir))
    with pytest.raises(checkpointing.WorkdirError, match="dataset.folder="):
        checkpointing.check_same_run(_config(tmp_path, **{"dataset.folder": "other"}),
                                     str(workdir))


def test_resuming_with_another_evaluation_preprocessing_is_refused(tmp_path):
    """The best checkpoint, the export and the ensemble artefact would disagree on how the
    model is fed (only training augmentation may change on a resume)."""
    workdir = tmp_path / "run"
    _saved_run(smoke_config("resnet50", tmp_path / "cache"), workdir)
    config = smoke_config("resnet50", tmp_path / "cache", **{"input.normalization": "unit"})
    with pytest.raises(checkpointing.WorkdirError) as error:
        trainer.train_and_evaluate(config, str(workdir))
    assert "(input.normalization='imagenet' there, 'unit' here)" in str(error.value)
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]


def test_a_setting_evaluation_does_not_read_may_change_on_a_resume(tmp_path):
    """MA-Net evaluates by a plain resize: its resize_size feeds only a training crop mode, so
    changing it leaves the best checkpoint, export and ensemble artefact consistent."""
    workdir = tmp_path / "run"
    _saved_run(smoke_config("manet", tmp_path / "cache"), workdir)
    resized = smoke_config("manet", tmp_path / "cache", **{"input.resize_size": 300})
    checkpointing.check_same_run(resized, str(workdir))
    cropped = smoke_config("manet", tmp_path / "cache", **{"input.eval_resize": "resize_crop"})
    with pytest.raises(checkpointing.WorkdirError) as error:
        checkpointing.check_same_run(cropped, str(workdir))
    assert "input.eval_resize='resize' there, 'resize_crop' here" in str(error.value)
    assert "input.resize_size=None there, " in str(error.value)


def test_a_workdir_from_before_input_seed_compares_its_seed_as_the_data_orders(tmp_path):
    """Before input.seed existed, `seed` also seeded the data order: such a config.json resumes
    with the same seed and refuses another, named as the data order's input.seed."""
    workdir = tmp_path / "run"
    old = smoke_config("resnet50", tmp_path / "cache", seed=1).to_dict()
    del old["input"]["seed"]
    workdir.mkdir()
    (workdir / checkpointing.CONFIG_FILE).write_text(json.dumps(old))
    (workdir / "checkpoints" / "1").mkdir(parents=True)
    checkpointing.check_same_run(smoke_config("resnet50", tmp_path / "cache", seed=1),
                                 str(workdir))
    with pytest.raises(checkpointing.WorkdirError) as error:
        checkpointing.check_same_run(
            smoke_config("resnet50", tmp_path / "cache", **{"seed": 1, "input.seed": 0}),
            str(workdir))
    assert "(input.seed=1 there, 0 here)" in str(error.value)
