"""Metrics against hand-computed values."""

import numpy as np
import pytest
from helpers import texts_cut_off

from cer_jax import metrics


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    m = metrics.classification_metrics(labels, preds, 4, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=1/2 R=1/2 -> 0.5; b: P=2/3 R=1 -> 0.8; c: P=1 R=1/2 -> 2/3; d absent everywhere:
    # 0/0, undefined (None), not sklearn's zero_division 0 (read as a class never recognised).
    assert m["per_class_f1"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 2 / 3, "d": None})
    # Macro F1 over the classes present (scikit-learn's default, as the follow-up paper reports it).
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["num_examples"] == 6


def test_a_class_absent_from_the_labels_but_predicted_has_f1_zero():
    """F1 = 2TP / (2TP + FP + FN) = 0 is defined there, and macro F1 counts it (sklearn)."""
    m = metrics.classification_metrics(np.array([0, 0, 1]), np.array([0, 2, 1]), 3)
    assert m["per_class_f1"] == pytest.approx({"0": 2 / 3, "1": 1.0, "2": 0.0})
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_classification_metrics_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ"):
        metrics.classification_metrics(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="no examples"):
        metrics.classification_metrics(np.zeros(0), np.zeros(0), 2)


class _RecordingWriter:
    def __init__(self):
        self.tags: list[tuple[int, str]] = []

    def write_scalars(self, step, scalars):
        self.tags += [(step, tag) for tag in scalars]

    def write_images(self, step, images):
        self.tags += [(step, tag) for tag in images]


def test_an_evaluation_of_the_train_split_keeps_off_the_training_curves():
    """Training writes train/loss and train/accuracy at its log steps; an evaluation of a split
    named train at the same step wrote the same tags, two values at one step."""
    from types import SimpleNamespace

    from cer_jax import trainer

    scores = metrics.classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), 2,
                                            ["a", "b"])
    scores["loss"] = 0.5
    info = SimpleNamespace(class_names=["a", "b"])
    writer = _RecordingWriter()
    for split in ("validation", "train"):
        trainer.write_eval(writer, 4, split, scores, info)
    tags = [tag for _, tag in writer.tags]
    assert len(tags) == len(set(tags))
    assert not set(tags) & set(trainer.train_metrics(
        {"loss_sum": 1.0, "count": 1, "correct": 1, "grad_norm_sum": 1.0, "steps": 1}, 0.1, 10.0))
    assert {"validation/macro_f1", "validation/confusion_matrix", "eval_train/accuracy",
            "eval_train/f1/b"} <= set(tags)


def test_a_class_without_an_example_in_the_split_has_no_f1_point():
    """Its F1 is 0/0: a point at 0 on its curve would read as a class never recognised."""
    from types import SimpleNamespace

    from cer_jax import trainer

    scores = metrics.classification_metrics(np.array([0, 1]), np.array([0, 1]), 3,
                                            ["a", "b", "c"])
    scores["loss"] = 0.5
    writer = _RecordingWriter()
    trainer.write_eval(writer, 4, "test", scores, SimpleNamespace(class_names=["a", "b", "c"]))
    tags = {tag for _, tag in writer.tags}
    assert {"test/f1/a", "test/f1/b"} <= tags and "test/f1/c" not in tags


def test_the_confusion_matrix_says_what_its_colour_and_numbers_are():
    """Cells show counts, coloured by their share of the true class's row: an unnamed 0..1
    colour bar beside counts left the normalisation to guess (TensorBoard, fusion report)."""
    from cer_jax import plots

    fig = plots.confusion_matrix_figure(np.array([[3, 1], [0, 2]]), ["a", "b"], "test")
    image, colour_bar = fig.axes
    assert "row-normalised" in colour_bar.get_ylabel()
    assert "counts" in colour_bar.get_ylabel()
    assert [t.get_text() for t in image.texts] == ["3", "1", "0", "2"]
    assert image.images[0].get_array()[0].tolist() == [0.75, 0.25]


COMPOUND = ["Happily Surprised", "Happily Disgusted", "Sadly Fearful", "Sadly Angry",
            "Sadly Surprised", "Sadly Disgusted", "Fearfully Angry", "Fearfully Surprised",
            "Angrily Surprised", "Angrily Disgusted", "Disgustedly Surprised"]


@pytest.mark.parametrize("names", [
    ["a", "b"], ["x", "y", "z"], COMPOUND[-2:], COMPOUND[-5:], COMPOUND[:7], COMPOUND,
    ["a_long_folder_name_of_the_first_class_here", "and_one_as_long_for_the_second_class"],
], ids=lambda names: f"{len(names)}x{max(map(len, names))}")
def test_every_word_of_the_confusion_matrix_is_inside_the_picture(names):
    """A folder dataset of 2-5 classes (or of long class names, whose slant shortens the matrix)
    drew a colour bar shorter than its label, which TensorBoard and the fusion report showed
    cut at both ends ('our: share of ... cells: c')."""
    from cer_jax import plots

    confusion = np.arange(len(names) ** 2).reshape(len(names), len(names))
    fig = plots.confusion_matrix_figure(confusion, names, "validation @ step 123456")
    assert texts_cut_off(fig) == []
