"""Each model's smoke variant learns on synthetic RAF-DB; the workdir and export are complete."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from conftest import smoke_config
from sklearn.metrics import accuracy_score, f1_score

from cer_jax import checkpointing, export, train_state, warm_start
from cer_jax.pretrained import core

# Shares its expensive session fixtures with other files: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("smoke_data")


def _majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and macro F1 of always predicting the most frequent training class."""
    guess = np.full_like(test_labels, np.bincount(train_labels).argmax())
    return float((guess == test_labels).mean()), float(f1_score(test_labels, guess,
                                                                average="macro"))


@pytest.mark.parametrize("name", ["vit", "manet", "resnet50"])
def test_smoke_variant_learns_beyond_chance_and_the_majority_class(trained_runs, name):
    workdir, result = trained_runs[name]
    manifest, arrays = export.load_export(str(workdir))
    test = arrays["test"]
    num_classes = len(manifest["class_names"])
    accuracy = float((test["logits"].argmax(-1) == test["labels"]).mean())
    majority_accuracy, majority_f1 = _majority_baseline(arrays["train_fit"]["labels"],
                                                        test["labels"])
    assert accuracy == pytest.approx(result["export"]["test"]["accuracy"])
    assert accuracy > 2.0 / num_classes
    assert accuracy > majority_accuracy + 0.04, (accuracy, majority_accuracy)
    assert result["export"]["test"]["macro_f1"] > 2 * majority_f1


def test_export_follows_the_contract(trained_runs):
    workdir, result = trained_runs["resnet50"]
    manifest, arrays = export.load_export(str(workdir))
    config = checkpointing.load_config(str(workdir))
    assert manifest["format"] == 2 and manifest["model"] == "resnet"
    assert manifest["member"] == "resnet50" and manifest["train_split"] == "train_fit"
    assert manifest["dataset"] == "rafdb/compound" and len(manifest["class_names"]) == 11
    assert list(manifest["splits"]) == ["train_fit", "validation", "test"]
    assert manifest["step"] == checkpointing.best_step(str(workdir)) == result["best_step"]
    assert export.export_is_current(str(workdir))
    for split, out in arrays.items():
        n = config.dataset_info.split_sizes[split]
        assert out["logits"].shape == (n, 11) and out["logits"].dtype == np.float32
        assert out["features"].shape[0] == n and out["features"].dtype == np.float32
        assert out["labels"].dtype == np.int32 and out["file_names"].dtype.kind == "U"
        assert len(set(out["file_names"])) == n  # every example exactly once
        predictions = out["logits"].argmax(-1)
        # scikit-learn directly, not the exporter's own metric code.
        macro_f1 = f1_score(out["labels"], predictions, average="macro", zero_division=0)
        assert manifest["metrics"][split]["macro_f1"] == pytest.approx(macro_f1)
        assert manifest["metrics"][split]["accuracy"] == pytest.approx(
            accuracy_score(out["labels"], predictions))
    assert all(name.startswith("test_") for name in arrays["test"]["file_names"])


def test_restored_model_reproduces_the_exported_logits(trained_runs, synthetic_cache_dir):
    from cer_jax.data import pipeline

    workdir, _ = trained_runs["resnet50"]
    model, config = checkpointing.restore_best_model(str(workdir))
    info = pipeline.get_dataset_info(config)
    batch = next(iter(pipeline.eval_iterator(config, info, "validation", global_batch_size=64)))
    logits = np.asarray(model(batch["image"], train=False).logits)[batch["mask"]]
    _, arrays = export.load_export(str(workdir))
    rows = {name: i for i, name in enumerate(arrays["validation"]["file_names"])}
    index = [rows[str(name)] for name in batch["file_name"][batch["mask"]]]
    np.testing.assert_allclose(logits, arrays["validation"]["logits"][index], rtol=1e-4,
                               atol=1e-4)


def test_workdir_has_config_events_and_checkpoints(trained_runs):
    workdir, result = trained_runs["manet"]
    with open(workdir / "config.json") as f:
        saved = json.load(f)
    assert saved["model"]["name"] == "manet" and saved["dataset_info"]["num_classes"] == 11
    assert os.listdir(workdir / "checkpoints") and os.listdir(workdir / "best")
    events = glob.glob(str(workdir / "events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(events[0], size_guidance={"images": 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    for tag in ("train/loss", "train/learning_rate", "steps_per_sec",
                "validation/macro_f1", "test/accuracy"):
        assert tag in tags["scalars"] or tag in tags.get("tensors", []), tag
    assert any("confusion_matrix" in tag for tag in tags["images"] + tags.get("tensors", []))
    assert result["step"] == saved["dataset_info"]["total_steps"]


def test_init_from_a_workdir_loads_the_backbone_and_renews_the_head(
    trained_runs, synthetic_cache_dir
):
    workdir, _ = trained_runs["resnet50"]
    source, _ = checkpointing.restore_best_model(str(workdir))
    config = smoke_config("resnet50", synthetic_cache_dir, **{"init.workdir": str(workdir)})
    model = train_state.create_model(config, num_classes=7, seed=5)  # a new label space
    warm_start.load_initial_weights(model, config)
    got, want = core.model_arrays(model), core.model_arrays(source)
    for name, var in got.items():
        if name.startswith("head/"):
            assert var.get_value().shape[-1] == 7
        else:
            np.testing.assert_array_equal(var.get_value(), want[name].get_value())


def test_load_export_explains_a_missing_export(tmp_path):
    with pytest.raises(export.ExportError, match="has no export"):
        export.load_export(str(tmp_path))
    assert not export.export_is_current(str(tmp_path))
