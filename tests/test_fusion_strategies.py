"""Fusion strategies on hand-made member outputs whose right answer is known."""

import numpy as np
import pytest
import scipy.special
from sklearn import metrics as skm

from cer_jax.fusion import strategies
from cer_jax.fusion.strategies import FusionData

K = 5


def one_hot_logits(predictions: np.ndarray, scale: float = 4.0) -> np.ndarray:
    return scale * np.eye(K)[predictions]


def make_data(logits: list[np.ndarray], labels: np.ndarray, features=None) -> FusionData:
    features = features or [np.zeros((len(labels), 2), np.float32) for _ in logits]
    return FusionData(np.stack(logits).astype(np.float32), tuple(features), labels)


def test_batched_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K - 1, size=60)  # class K-1 never a label
    predictions = rng.integers(0, K, size=(7, 60))
    predictions[0] = labels
    predictions[1, :] = 2  # one class predicted only
    expected = [skm.f1_score(labels, p, average="macro", zero_division=0) for p in predictions]
    np.testing.assert_allclose(strategies.batched_macro_f1(labels, predictions, K), expected)


def test_simplex_grid_covers_the_simplex():
    grid = strategies.simplex_grid(3, 0.05)
    assert grid.shape == (231, 3)  # C(22, 2)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert len({tuple(np.round(w, 6)) for w in grid}) == len(grid)
    with pytest.raises(ValueError, match="grid step 0.3 .* must divide 1"):
        strategies.simplex_grid(3, 0.3)


def test_uniform_fusion_of_identical_members_equals_one_member():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, K)) * 3
    labels = rng.integers(0, K, size=40)
    data = make_data([logits, logits, logits], labels)
    member_probs = scipy.special.softmax(logits.astype(np.float32).astype(np.float64), axis=-1)
    for name in ("uniform_probabilities", "uniform_logits", "performance_weighted"):
        fused = strategies.fit_strategy(name, data).predict_proba(data)
        np.testing.assert_allclose(fused, member_probs, rtol=1e-6, err_msg=name)


def test_uniform_fusions_of_different_members_are_the_arithmetic_and_geometric_means():
    """Identical members cannot tell the two apart, nor from one member alone: here the mean
    of the members' softmax, and the softmax of their mean logits."""
    rng = np.random.default_rng(8)
    logits = [rng.normal(size=(40, K)).astype(np.float32) * 3 for _ in range(3)]
    data = make_data(logits, rng.integers(0, K, size=40))
    probs = scipy.special.softmax(np.stack(logits).astype(np.float64), axis=-1)
    arithmetic = probs.mean(0)
    geometric = np.exp(np.log(probs).mean(0))
    geometric /= geometric.sum(-1, keepdims=True)
    assert np.abs(arithmetic - geometric).max() > 0.05  # the two differ on these members
    for name, expected in (("uniform_probabilities", arithmetic), ("uniform_logits", geometric)):
        fitted = strategies.fit_strategy(name, data)
        np.testing.assert_allclose(fitted.predict_proba(data), expected, rtol=1e-6, err_msg=name)


def test_performance_weights_are_proportional():
    scores = [0.9, 0.6, 0.3]
    n = 100
    labels = np.arange(n) % K
    members = []
    for score in scores:
        predictions = labels.copy()
        wrong = np.arange(n) >= round(score * n)
        predictions[wrong] = (labels[wrong] + 1) % K
        members.append(one_hot_logits(predictions))
    fitted = strategies.performance_weighted(make_data(members, labels), metric="accuracy")
    np.testing.assert_allclose(fitted.params["member_scores"], scores)
    np.testing.assert_allclose(fitted.params["weights"], np.array(scores) / sum(scores))
    f1_weights = strategies.performance_weighted(
        make_data(members, labels), metric="macro_f1"
    ).params
    expected_f1 = [skm.f1_score(labels, m.argmax(-1), average="macro") for m in members]
    np.testing.assert_allclose(f1_weights["member_scores"], expected_f1)
    with pytest.raises(ValueError, match="config key performance_weighted.metric"):
        strategies.performance_weighted(make_data(members, labels), metric="auc")


def test_optimised_weights_favour_the_member_that_is_always_right():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, K, size=200)
    right = one_hot_logits(labels, scale=2.0)
    noisy = [rng.normal(size=(200, K)) * 6 for _ in range(2)]
    data = make_data([noisy[0], right, noisy[1]], labels)
    fitted = strategies.optimised_weights(data)
    weights = np.array(fitted.params["weights"])
    assert fitted.params["selection_macro_f1"] == 1.0
    assert weights[1] > weights[0] and weights[1] > weights[2]
    np.testing.assert_array_equal(fitted.predict_proba(data).argmax(-1), labels)
    # Beyond the grid size the random search must find it as well.
    five = make_data([noisy[0], noisy[1], right, noisy[0], noisy[1]], labels)
    sampled = strategies.optimised_weights(five, num_samples=400)
    assert sampled.params["selection_macro_f1"] == 1.0
    assert np.argmax(sampled.params["weights"]) == 2


def test_optimised_weights_break_ties_towards_uniform():
    labels = np.arange(30) % K
    right = one_hot_logits(labels)
    fitted = strategies.optimised_weights(make_data([right, right], labels))
    np.testing.assert_allclose(fitted.params["weights"], [0.5, 0.5])


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(3)
    calibrated = rng.normal(size=(20000, K)) * 2
    labels = np.array([rng.choice(K, p=p) for p in scipy.special.softmax(calibrated, axis=-1)])
    overconfident = calibrated * 3.0  # the true temperature is 3
    underconfident = calibrated * 0.5
    data = make_data([overconfident, underconfident], labels)
    fitted = strategies.temperature_scaled(data)
    np.testing.assert_allclose(fitted.params["temperatures"], [3.0, 0.5], rtol=0.05)
    expected = scipy.special.softmax(calibrated.astype(np.float32), axis=-1)
    np.testing.assert_allclose(fitted.predict_proba(data), expected, atol=0.05)


def test_stacking_beats_a_bad_member():
    rng = np.random.default_rng(4)

    def split(n):
        labels = rng.integers(0, K, size=n)
        weak = one_hot_logits(labels, 1.0) + rng.normal(size=(n, K)) * 1.2  # mediocre
        shifted = one_hot_logits((labels + 1) % K) + rng.normal(size=(n, K)) * 0.3  # always wrong
        return make_data([weak, shifted], labels)

    validation, test = split(300), split(300)
    fitted = strategies.stacking(validation)
    predictions = fitted.predict_proba(test).argmax(-1)
    bad_f1 = skm.f1_score(test.labels, test.logits[1].argmax(-1), average="macro")
    weak_f1 = skm.f1_score(test.labels, test.logits[0].argmax(-1), average="macro")
    stacked_f1 = skm.f1_score(test.labels, predictions, average="macro")
    assert bad_f1 == 0.0
    assert stacked_f1 > 0.95 > weak_f1
    assert fitted.params["C"] in (0.01, 0.1, 1.0, 10.0, 100.0)
    assert fitted.params["cv_folds"] == 5


def test_stacking_predicts_every_class_even_if_absent_from_selection():
    labels = np.arange(40) % (K - 1)  # the last class never occurs on validation
    data = make_data([one_hot_logits(labels)], labels)
    probabilities = strategies.stacking(data).predict_proba(data)
    assert probabilities.shape == (40, K)
    np.testing.assert_allclose(probabilities[:, K - 1], 0.0)
    singletons = np.arange(K)  # one example per class: nothing to cross-validate
    fitted = strategies.stacking(make_data([one_hot_logits(singletons)], singletons))
    assert fitted.params["cv_folds"] == 0
    one_class = make_data([one_hot_logits(labels)], np.full(40, 2))
    constant = strategies.stacking(one_class).predict_proba(one_class)
    np.testing.assert_array_equal(constant.argmax(-1), 2)


def test_feature_mlp_learns_a_separable_problem():
    rng = np.random.default_rng(5)
    centres = [rng.normal(size=(K, 8)) * 4, rng.normal(size=(K, 4)) * 4]

    def split(n):
        labels = rng.integers(0, K, size=n)
        features = [c[labels] + rng.normal(size=(n, c.shape[1])) for c in centres]
        noise = [rng.normal(size=(n, K)) for _ in centres]  # logits carry no information
        return make_data(noise, labels, features)

    train, validation, test = split(400), split(100), split(200)
    fitted = strategies.feature_mlp(
        validation, train, hidden_sizes=(32,), max_epochs=60, patience=10
    )
    accuracy = np.mean(fitted.predict_proba(test).argmax(-1) == test.labels)
    assert accuracy > 0.95
    assert fitted.params["input_dim"] == 12
    assert 1 <= fitted.params["best_epoch"] <= fitted.params["epochs_run"] <= 60
    with pytest.raises(ValueError, match="feature_mlp needs the members' outputs on the training"):
        strategies.feature_mlp(validation, None)


def test_feature_mlp_visits_the_training_rows_in_a_new_order_each_epoch_on_one_thread(
        monkeypatch):
    """sklearn's own shuffle draws the same order in every partial_fit after the first; and
    more BLAS threads change the numbers (by ~1e-3 in a probability on 800 rows)."""
    import threadpoolctl
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(7)
    labels = rng.integers(0, K, size=60)
    features = [rng.normal(size=(60, 3)) + labels[:, None]]
    train = make_data([one_hot_logits(labels)], labels, features)
    select = train.rows(np.arange(30))
    seen, threads = [], []
    partial_fit = MLPClassifier.partial_fit

    def recording(self, inputs, targets, **kwargs):
        seen.append(tuple(inputs[:, 0]))  # the first standardised feature identifies a row
        threads.append({pool["num_threads"] for pool in threadpoolctl.threadpool_info()
                        if pool["user_api"] == "blas"})
        return partial_fit(self, inputs, targets, **kwargs)

    monkeypatch.setattr(MLPClassifier, "partial_fit", recording)
    strategies.feature_mlp(select, train, hidden_sizes=(8,), max_epochs=4, patience=4)
    assert len(seen) == 4
    assert all(sorted(order) == sorted(seen[0]) for order in seen)  # every row, every epoch
    assert len(set(seen)) == 4  # in four different orders
    assert all(t <= {1} for t in threads)


def test_cross_validation_does_not_reward_fitting_noise():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, K, size=80)
    data = make_data([rng.normal(size=(80, K)) for _ in range(3)], labels)
    options = {"inverse_regularisation": (100.0,), "max_folds": 2}
    in_sample = skm.f1_score(
        labels, strategies.stacking(data, **options).predict_proba(data).argmax(-1),
        average="macro")
    cross_validated = strategies.cross_validated_macro_f1("stacking", data, options=options)
    assert cross_validated < in_sample - 0.1
    uniform = skm.f1_score(labels, data.logits.mean(0).argmax(-1), average="macro")
    assert strategies.cross_validated_macro_f1("uniform_logits", data) == pytest.approx(uniform)


def test_cross_validation_on_a_class_of_one_example_warns_nothing():
    """A small validation split (the demo's --num_train_images=300) has classes of one example:
    the selection's 2 folds cannot both hold them, which the report's fold count says; sklearn's
    UserWarning about it was printed once per strategy into the demo's output."""
    import warnings

    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 4])
    data = make_data([one_hot_logits(labels), one_hot_logits(np.roll(labels, 1))], labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score = strategies.cross_validated_macro_f1("uniform_logits", data)
    assert 0 <= score <= 1


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="Unknown fusion strategy 'median'"):
        strategies.fit_strategy("median", make_data([np.zeros((2, K))], np.zeros(2, int)))


@pytest.mark.parametrize("name", sorted(strategies.STRATEGIES))
@pytest.mark.parametrize("num_labels", [K, 2, 1])
def test_every_fitted_strategy_predicts_from_its_serialisable_state(name, num_labels):
    """`predict_from_state(name, state)` equals the fitted closure (what the ensemble stores)."""
    rng = np.random.default_rng(11)

    def split(n):
        labels = rng.integers(0, num_labels, size=n)
        logits = [one_hot_logits(labels, 2.0) + rng.normal(size=(n, K)) for _ in range(2)]
        features = [rng.normal(size=(n, 3)).astype(np.float32) + labels[:, None] for _ in range(2)]
        return make_data(logits, labels, features)

    select, train, other = split(40), split(60), split(25)
    options = {"max_epochs": 5} if name == "feature_mlp" else {}
    fitted = strategies.fit_strategy(name, select, train, **options)
    assert fitted.name == name
    for key, value in fitted.state.items():
        assert isinstance(value, np.ndarray | int | float | str), key
    expected = fitted.predict_proba(other)
    got = strategies.predict_from_state(name, fitted.state, other)
    # sklearn's MLP computes in the features' float32; the state is applied in float64.
    tolerance = 1e-6 if name == "feature_mlp" else 1e-12
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance)
