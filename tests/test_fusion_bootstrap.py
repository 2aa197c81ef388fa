"""The fusion report's bootstrap intervals: against a slow scikit-learn reference, and sane."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cer_jax.fusion import bootstrap


def _problem(num_examples=60, num_classes=6, seed=0):
    """Labels with a rare class (absent from some resamples) and a class only ever predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes - 2, size=num_examples)
    labels[:2] = num_classes - 2  # the rare class: 2 examples
    systems = []
    for accuracy in (0.8, 0.6):
        wrong = rng.integers(0, num_classes, size=num_examples)  # includes the unlabelled class
        systems.append(np.where(rng.random(num_examples) < accuracy, labels, wrong))
    return labels, systems, num_classes


def _reference(labels, systems, samples, seed):
    """A loop over resamples drawn as the module documents, scored by scikit-learn."""
    rows = np.random.default_rng(seed).integers(0, labels.size, size=(samples, labels.size))
    return {
        "accuracy": np.array([[skm.accuracy_score(labels[r], p[r]) for r in rows]
                              for p in systems]),
        "macro_f1": np.array([[skm.f1_score(labels[r], p[r], average="macro") for r in rows]
                              for p in systems]),
    }, rows


@pytest.mark.parametrize("chunk_elements", [1 << 22, 100], ids=["one_chunk", "row_by_row"])
def test_resampled_scores_and_intervals_match_sklearn_on_the_same_draws(monkeypatch,
                                                                          chunk_elements):
    labels, systems, num_classes = _problem()
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", chunk_elements)
    fast = bootstrap.resampled_scores(labels, systems, num_classes, samples=40, seed=7)
    slow, rows = _reference(labels, systems, samples=40, seed=7)
    rare_absent = np.array([num_classes - 2 not in labels[r] for r in rows])
    assert rare_absent.any() and not rare_absent.all()  # both cases are exercised
    for metric in bootstrap.METRICS:
        np.testing.assert_allclose(fast[metric], slow[metric], rtol=0, atol=1e-12)
        for s in range(len(systems)):
            np.testing.assert_allclose(
                bootstrap.interval(fast[metric][s], 0.95),
                np.quantile(slow[metric][s], [0.025, 0.975]), atol=1e-12)
        # Paired: the difference on each resample, both systems on the same examples.
        np.testing.assert_allclose(
            bootstrap.interval(fast[metric][0] - fast[metric][1], 0.9),
            np.quantile(slow[metric][0] - slow[metric][1], [0.05, 0.95]), atol=1e-12)


def test_a_perfect_classifier_has_a_zero_width_interval_and_intervals_hold_the_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 11, size=300)
    good = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 11, size=300))
    scores = bootstrap.resampled_scores(labels, [labels, good], 11, samples=500, seed=0)
    for metric in bootstrap.METRICS:
        assert bootstrap.interval(scores[metric][0], 0.95) == [1.0, 1.0]
        low, high = bootstrap.interval(scores[metric][1], 0.95)
        point = {"accuracy": skm.accuracy_score(labels, good),
                 "macro_f1": skm.f1_score(labels, good, average="macro")}[metric]
        assert low < point < high and 0.05 < high - low < 0.2


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others():
    labels, systems, num_classes = _problem(num_examples=200)
    first, again, other = (bootstrap.resampled_scores(labels, systems, num_classes, 200, seed)
                           for seed in (3, 3, 4))
    for metric in bootstrap.METRICS:
        np.testing.assert_array_equal(first[metric], again[metric])
        assert not np.array_equal(first[metric], other[metric])


def test_accuracy_intervals_cover_the_true_accuracy_about_as_often_as_they_claim():
    """Resampling examples (not, say, a fixed subset) gives the binomial spread: 95 % intervals
    over 300 examples of a 70 % classifier hold 0.7 in about 95 % of drawn test sets."""
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    trials, size = 200, 300
    for _ in range(trials):
        labels = rng.integers(0, 5, size=size)
        predicted = np.where(rng.random(size) < 0.7, labels, (labels + 1) % 5)
        scores = bootstrap.resampled_scores(labels, [predicted], 5, samples=400,
                                            seed=int(rng.integers(1 << 30)))
        low, high = bootstrap.interval(scores["accuracy"][0], 0.95)
        covered += low <= 0.7 <= high
        widths.append(high - low)
    assert 0.88 <= covered / trials <= 0.99
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / size), rel=0.1)
