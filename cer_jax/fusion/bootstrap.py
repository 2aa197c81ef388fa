"""Percentile bootstrap intervals for the fusion report: each split's examples resampled with
replacement, the same resamples for every system (so differences between systems are paired).

Why: a compound-expression test split holds ~1,000 images, where a point figure alone cannot
say whether fusion's lead over a member is more than the luck of the draw.

Resample b of a split with N examples is row b of
`np.random.default_rng(seed).integers(0, N, size=(samples, N))` (drawn in chunks of rows, which
gives the same numbers), so anyone can redraw it. Macro F1 on a resample is scikit-learn's
`f1_score(average="macro")`: over the classes in that resample's labels or predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cer_jax.fusion import strategies as strategies_lib

METRICS = ("accuracy", "macro_f1")
# Resampled example indices held at once (per chunk of resamples): bounds memory on large splits.
_CHUNK_ELEMENTS = 1 << 22


def resampled_scores(
    labels: np.ndarray,
    predictions: Sequence[np.ndarray],
    num_classes: int,
    samples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """{metric: [S, samples]}: each system's accuracy and macro F1 on every resample.

    `predictions` holds S systems' predicted classes [N] on the same examples as `labels` [N].
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = [np.asarray(p, dtype=np.int64) for p in predictions]
    num_examples = labels.size
    rng = np.random.default_rng(seed)
    scores = {m: np.empty((len(predictions), samples)) for m in METRICS}
    chunk = max(1, _CHUNK_ELEMENTS // max(num_examples, 1))
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        rows = rng.integers(0, num_examples, size=(stop - start, num_examples))
        resampled_labels = labels[rows]
        for s, predicted in enumerate(predictions):
            counts = strategies_lib.batched_confusion(
                resampled_labels, predicted[rows], num_classes)
            scores["accuracy"][s, start:stop] = (
                np.trace(counts, axis1=1, axis2=2) / num_examples)
            scores["macro_f1"][s, start:stop] = strategies_lib.macro_f1_from_confusion(counts)
    return scores


def interval(values: np.ndarray, confidence: float) -> list[float]:
    """The percentile interval [low, high] of resampled `values` (last axis)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail], axis=-1)
    return [float(low), float(high)]
