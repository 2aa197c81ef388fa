"""Metrics against hand-computed values."""

import numpy as np
import pytest

from cer_jax import metrics


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    m = metrics.classification_metrics(labels, preds, 4, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=1/2 R=1/2 -> 0.5; b: P=2/3 R=1 -> 0.8; c: P=1 R=1/2 -> 2/3; d absent everywhere.
    assert m["per_class_f1"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 2 / 3, "d": 0.0})
    # Macro F1 over the classes present (scikit-learn's default, as the paper reports it).
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert m["num_examples"] == 6


def test_classification_metrics_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="differ"):
        metrics.classification_metrics(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="no examples"):
        metrics.classification_metrics(np.zeros(0), np.zeros(0), 2)
