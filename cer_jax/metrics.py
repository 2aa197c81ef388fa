"""Exact classification metrics over a whole split (no dropped remainder), via scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def classification_metrics(
    labels: np.ndarray,
    predictions: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro F1 (sklearn's default label set, as the follow-up paper), per-class F1,
    confusion.

    Per-class F1 and the confusion matrix always cover all `num_classes` classes, in label order.
    A class with no example in `labels` that is never predicted has F1 0/0: None (undefined),
    not sklearn's zero_division 0, which a table would read as a class never recognised; macro F1
    leaves it out too (averaged over the classes in `labels` or `predictions`).
    """
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    if labels.size == 0:
        raise ValueError("no examples to score")
    all_labels = list(range(num_classes))
    per_class = skm.f1_score(
        labels, predictions, labels=all_labels, average=None, zero_division=0
    )
    names = list(class_names) if class_names is not None else [str(i) for i in all_labels]
    seen = np.isin(all_labels, labels) | np.isin(all_labels, predictions)
    return {
        "num_examples": int(labels.size),
        "accuracy": float(skm.accuracy_score(labels, predictions)),
        "macro_f1": float(skm.f1_score(labels, predictions, average="macro", zero_division=0)),
        "per_class_f1": {
            name: float(f) if defined else None
            for name, f, defined in zip(names, per_class, seen, strict=True)
        },
        "confusion_matrix": skm.confusion_matrix(
            labels, predictions, labels=all_labels
        ).tolist(),
    }
