"""Late-fusion strategies: each is fitted on one split (selection) and applied to any split.

A strategy is a plain function `fit(select, train=None, **options) -> Fitted`. `select` holds the
members' outputs on the split where weights and hyper-parameters are chosen (validation, unless
the paper's protocol of choosing on the reported split is asked for); `train` is the members'
outputs on the training split, which only the feature-level MLP uses. `Fitted.predict_proba`
turns the members' outputs on any split into fused class probabilities [N, K].
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.special

# scikit-learn and scipy.optimize are imported where strategies are fitted: applying a fitted
# one (`predict_from_state`, what cer_jax.predict runs) needs only numpy, and they would add
# ~1.3 s to every prediction's start.
if TYPE_CHECKING:
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler


@dataclasses.dataclass(frozen=True)
class FusionData:
    """The members' outputs on one split, rows aligned by file name across members."""

    logits: np.ndarray  # [M, N, K] float
    features: tuple[np.ndarray, ...]  # M arrays [N, D_m]
    labels: np.ndarray  # [N] int

    @property
    def num_members(self) -> int:
        return self.logits.shape[0]

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    def probabilities(self) -> np.ndarray:
        """Each member's softmax probabilities, [M, N, K]."""
        return scipy.special.softmax(self.logits.astype(np.float64), axis=-1)

    def subset(self, members: Sequence[int]) -> FusionData:
        """The same split restricted to some members (for the ablation)."""
        members = list(members)
        return FusionData(
            logits=self.logits[members],
            features=tuple(self.features[m] for m in members),
            labels=self.labels,
        )

    def rows(self, indices: np.ndarray) -> FusionData:
        """The same members restricted to some examples (for cross-validation)."""
        return FusionData(
            logits=self.logits[:, indices],
            features=tuple(f[indices] for f in self.features),
            labels=self.labels[indices],
        )


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A fitted strategy: what was chosen (JSON-able) and how it fuses a split.

    `name` and `state` make it serialisable: `state` holds every fitted number as numpy arrays
    or plain scalars / strings, and `predict_from_state(name, state, data)` fuses a split from
    them alone (no scikit-learn object), exactly as `predict_proba` does. This is what the
    ensemble artefact stores (`cer_jax.ensemble`).
    """

    params: dict[str, Any]
    predict_proba: Callable[[FusionData], np.ndarray]
    name: str = ""
    state: dict[str, Any] = dataclasses.field(default_factory=dict)


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """sklearn's default macro F1 (over classes seen in labels or predictions)."""
    return float(batched_macro_f1(labels, predictions[None], num_classes)[0])


def batched_macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro F1 of many prediction vectors [G, N] at once, as sklearn's f1_score(average="macro").

    `labels` is [N] (shared) or [G, N] (one vector per row: bootstrap resamples).
    """
    return macro_f1_from_confusion(batched_confusion(labels, predictions, num_classes))


def batched_confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts [G, K, K] (row: label, column: prediction) of G vectors by one bincount."""
    num_rows = predictions.shape[0]
    labels = np.broadcast_to(labels, predictions.shape)
    flat = (np.arange(num_rows)[:, None] * num_classes + labels) * num_classes
    return np.bincount(
        (flat + predictions).reshape(-1), minlength=num_rows * num_classes * num_classes
    ).reshape(num_rows, num_classes, num_classes)


def macro_f1_from_confusion(counts: np.ndarray) -> np.ndarray:
    """Macro F1 of confusion counts [G, K, K], as sklearn's f1_score(average="macro").

    sklearn averages over the classes present in the labels or the predictions; per class
    F1 = 2TP / (2TP + FP + FN), which is never 0/0 for such a class.
    """
    true_positives = np.diagonal(counts, axis1=1, axis2=2)
    denominators = counts.sum(axis=2) + counts.sum(axis=1)
    present = denominators > 0
    f1 = np.where(present, 2 * true_positives / np.maximum(denominators, 1), 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _check_metric(metric: str) -> None:
    if metric not in ("accuracy", "macro_f1"):
        raise ValueError(
            f"Unknown performance metric {metric!r} (config key performance_weighted.metric); "
            "choose 'accuracy' or 'macro_f1'."
        )


def _check_grid_step(step: float) -> None:
    if not 0 < step <= 1 or not np.isclose(round(1.0 / step) * step, 1.0):
        raise ValueError(f"grid step {step} (config key optimised_weights.grid_step) must divide 1")


# Weight vectors an exhaustive grid may hold: ~25 s of search each fit on a 2-core machine, and
# a fusion fits it 6 times or more (5 folds). Finer grids ran for hours (0.001 with 4 members:
# 1.7e8 vectors, tens of GB) before any result.
MAX_GRID_SIZE = 1_000_000


def grid_size(num_members: int, step: float) -> int:
    """How many weight vectors `simplex_grid(num_members, step)` holds."""
    return math.comb(round(1.0 / step) + num_members - 1, num_members - 1)


def _check_grid_size(num_members: int, step: float, max_grid_members: int) -> None:
    if num_members > max_grid_members:
        return  # Dirichlet samples, not the grid
    size = grid_size(num_members, step)
    if size > MAX_GRID_SIZE:
        raise ValueError(
            f"config key optimised_weights.grid_step={step} gives {num_members} members a grid "
            f"of {size:,} weight vectors (at most {MAX_GRID_SIZE:,}: the search would run for "
            f"hours); use a coarser grid_step (0.05: {grid_size(num_members, 0.05):,}), or set "
            f"optimised_weights.max_grid_members below {num_members} to search by Dirichlet "
            "samples.")


def _at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > 0), "> 0"


# numpy's and scikit-learn's random states take 0 .. 2**32 - 1: another seed was a ValueError
# traceback in the fit, after every member was loaded.
_SEED = ((lambda v: 0 <= v < 2**32), "a whole number in 0 .. 2**32 - 1")


# The numeric options whose range is known without data: option -> (accepts, allowed range).
_OPTION_RANGES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "optimised_weights": {
        "max_grid_members": _at_least(0),
        "num_samples": _at_least(1),
        "refine_rounds": ((lambda v: 0 <= v <= 3), "in 0..3 (concentrations 50, 200, 1000)"),
        "seed": _SEED,
    },
    "stacking": {
        "inverse_regularisation": (
            (lambda v: len(v) > 0 and all(c > 0 for c in v)), "a non-empty list of values > 0"
        ),
        "max_folds": _at_least(2),
        "seed": _SEED,
    },
    "feature_mlp": {
        "hidden_sizes": ((lambda v: all(isinstance(h, numbers.Integral) and h >= 1 for h in v)),
                         "a list of whole sizes >= 1"),
        "weight_decay": _at_least(0),
        "learning_rate": _positive(),
        "batch_size": _at_least(1),
        "max_epochs": _at_least(1),
        "patience": _at_least(1),
        "seed": _SEED,
    },
}


def _accepts(accepts: Callable[[Any], bool], value: Any) -> bool:
    """A word where a number goes (`--config.feature_mlp.hidden_sizes=256,l28`) is refused
    with the range: it was the comparison's TypeError traceback."""
    try:
        return bool(accepts(value))
    except TypeError:
        return False


def check_options(name: str, options: dict[str, Any], num_members: int | None = None) -> None:
    """The option values of strategy `name` that can be checked without data (ValueError), so
    that a bad one stops `cer_jax.fuse` before any member is loaded; with `num_members`, also
    the size of optimised_weights' grid."""
    if name == "performance_weighted" and "metric" in options:
        _check_metric(options["metric"])
    elif name == "optimised_weights" and "grid_step" in options:
        _check_grid_step(options["grid_step"])
    for key, (accepts, allowed) in _OPTION_RANGES.get(name, {}).items():
        if key in options and not _accepts(accepts, options[key]):
            raise ValueError(f"config key {name}.{key}={options[key]!r} must be {allowed}.")
    if name == "optimised_weights" and num_members is not None:
        defaults = inspect.signature(optimised_weights).parameters
        _check_grid_size(
            num_members,
            options.get("grid_step", defaults["grid_step"].default),
            options.get("max_grid_members", defaults["max_grid_members"].default))


def _score(labels: np.ndarray, probabilities: np.ndarray, metric: str) -> float:
    _check_metric(metric)
    predictions = probabilities.argmax(axis=-1)
    if metric == "accuracy":
        return float(np.mean(predictions == labels))
    return macro_f1(labels, predictions, probabilities.shape[-1])


def _weighted_probabilities(weights: np.ndarray) -> Callable[[FusionData], np.ndarray]:
    weights = np.asarray(weights, dtype=np.float64)
    return lambda data: np.einsum("m,mnk->nk", weights, data.probabilities())


def performance_weighted(
    select: FusionData, train: FusionData | None = None, *, metric: str = "macro_f1"
) -> Fitted:
    """The paper's fusion: probabilities averaged with weights proportional to each member's
    performance on the selection split (uniform if every member scores 0)."""
    del train
    scores = np.array([_score(select.labels, p, metric) for p in select.probabilities()])
    total = scores.sum()
    weights = scores / total if total > 0 else np.full(len(scores), 1.0 / len(scores))
    return Fitted(
        {"metric": metric, "member_scores": scores.tolist(), "weights": weights.tolist()},
        _weighted_probabilities(weights),
        state={"weights": np.asarray(weights, np.float64)},
    )


def uniform_probabilities(select: FusionData, train: FusionData | None = None) -> Fitted:
    """Plain mean of the members' probabilities."""
    del train
    weights = np.full(select.num_members, 1.0 / select.num_members)
    return Fitted(
        {"weights": weights.tolist()},
        _weighted_probabilities(weights),
        state={"weights": np.asarray(weights, np.float64)},
    )


def uniform_logits(select: FusionData, train: FusionData | None = None) -> Fitted:
    """Softmax of the mean of the members' logits (a geometric mean of probabilities)."""
    del select, train
    return Fitted(
        {}, lambda data: scipy.special.softmax(data.logits.astype(np.float64).mean(0), axis=-1)
    )


def simplex_grid(num_members: int, step: float) -> np.ndarray:
    """Every weight vector on the simplex whose entries are multiples of `step`, [G, M]."""
    _check_grid_step(step)
    parts = round(1.0 / step)
    rows = [
        np.diff([-1, *cuts, parts + num_members - 1]) - 1
        for cuts in itertools.combinations(range(parts + num_members - 1), num_members - 1)
    ]
    return np.asarray(rows, dtype=np.float64).reshape(-1, num_members) / parts


def _best_weights(
    candidates: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, float]:
    """The candidate with the best macro F1; ties go to the candidate nearest uniform."""
    num_classes = probabilities.shape[-1]
    scores = np.concatenate([
        batched_macro_f1(
            labels,
            np.einsum("gm,mnk->gnk", candidates[i : i + chunk], probabilities).argmax(-1),
            num_classes,
        )
        for i in range(0, len(candidates), chunk)
    ])
    best = scores.max()
    tied = np.flatnonzero(scores >= best - 1e-12)
    uniform = np.full(candidates.shape[1], 1.0 / candidates.shape[1])
    nearest = tied[np.argmin(np.linalg.norm(candidates[tied] - uniform, axis=1))]
    return candidates[nearest], float(best)


def optimised_weights(
    select: FusionData,
    train: FusionData | None = None,
    *,
    grid_step: float = 0.05,
    max_grid_members: int = 4,
    num_samples: int = 4000,
    refine_rounds: int = 3,
    seed: int = 0,
) -> Fitted:
    """Probability weights searched over the simplex for macro F1 on the selection split.

    Up to `max_grid_members` members: an exhaustive grid with `grid_step`. More: Dirichlet samples
    (plus uniform and the vertices), then rounds of samples concentrated around the best so far.
    """
    del train
    probabilities = select.probabilities()
    num_members = select.num_members
    _check_grid_size(num_members, grid_step, max_grid_members)
    if num_members <= max_grid_members:
        weights, score = _best_weights(
            simplex_grid(num_members, grid_step), probabilities, select.labels
        )
        search = f"grid step {grid_step}"
    else:
        rng = np.random.default_rng(seed)
        candidates = np.concatenate([
            np.full((1, num_members), 1.0 / num_members),
            np.eye(num_members),
            rng.dirichlet(np.ones(num_members), size=num_samples),
        ])
        weights, score = _best_weights(candidates, probabilities, select.labels)
        for concentration in (50.0, 200.0, 1000.0)[:refine_rounds]:
            local = rng.dirichlet(weights * concentration + 1e-3, size=num_samples // 4)
            weights, score = _best_weights(
                np.concatenate([weights[None], local]), probabilities, select.labels
            )
        search = f"{num_samples} Dirichlet samples + {refine_rounds} refinement rounds"
    return Fitted(
        {"weights": weights.tolist(), "selection_macro_f1": score, "search": search},
        _weighted_probabilities(weights),
        state={"weights": np.asarray(weights, np.float64)},
    )


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T), searched on log T."""
    logits = logits.astype(np.float64)

    def nll(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        log_probs = scaled - scipy.special.logsumexp(scaled, axis=-1, keepdims=True)
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    import scipy.optimize

    result = scipy.optimize.minimize_scalar(
        nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded", options={"xatol": 1e-5}
    )
    return float(np.exp(result.x))


def temperature_scaled(select: FusionData, train: FusionData | None = None) -> Fitted:
    """Each member calibrated by its own temperature (NLL on the selection split), then the
    calibrated probabilities are averaged uniformly."""
    del train
    temperatures = np.array([fit_temperature(z, select.labels) for z in select.logits])

    def predict_proba(data: FusionData) -> np.ndarray:
        scaled = data.logits.astype(np.float64) / temperatures[:, None, None]
        return scipy.special.softmax(scaled, axis=-1).mean(axis=0)

    return Fitted(
        {"temperatures": temperatures.tolist()},
        predict_proba,
        state={"temperatures": temperatures.astype(np.float64)},
    )


def _stratified_folds(labels: np.ndarray, max_folds: int, seed: int) -> StratifiedKFold | None:
    """Stratified k-fold, k = min(max_folds, the smallest class count) but at least 2; None if
    no class has two examples (nothing to cross-validate)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    smallest, largest = counts[counts > 0].min(), counts.max()
    if largest < 2:
        return None
    folds = max(2, min(max_folds, int(smallest)))
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)


def _full_probabilities(
    classifier: Any, inputs: np.ndarray, num_classes: int
) -> np.ndarray:
    """predict_proba spread over all K classes (classes absent when fitting get 0)."""
    probabilities = np.zeros((len(inputs), num_classes))
    probabilities[:, classifier.classes_] = classifier.predict_proba(inputs)
    return probabilities


def _stack_inputs(data: FusionData) -> np.ndarray:
    return np.concatenate(list(data.logits.astype(np.float64)), axis=1)


def stacking(
    select: FusionData,
    train: FusionData | None = None,
    *,
    inverse_regularisation: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
    max_folds: int = 5,
    seed: int = 0,
) -> Fitted:
    """Logistic regression on the members' concatenated logits, fitted on the selection split.

    C is chosen by stratified k-fold cross-validation (macro F1) on the selection split, then
    the model is refitted on all of it (with one example per class there is nothing to
    cross-validate and C stays at 1).
    """
    del train
    present = np.unique(select.labels)
    if len(present) < 2:  # nothing to discriminate: always the one class seen
        constant = np.eye(select.num_classes)[present[0]]
        return Fitted(
            {"constant_class": int(present[0])},
            lambda data: np.broadcast_to(constant, (data.labels.shape[0], data.num_classes)),
            state={"constant_class": int(present[0])},
        )
    import threadpoolctl
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = _stratified_folds(select.labels, max_folds, seed)
    # Tiny matrices: BLAS threads only cost (20x slower on a loaded 2-core machine).
    with warnings.catch_warnings(), threadpoolctl.threadpool_limits(limits=1):
        warnings.simplefilter("ignore", category=UserWarning)  # tiny classes in some folds
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        if folds is None:  # one example per class: keep sklearn's default C
            model = pipeline.fit(_stack_inputs(select), select.labels)
            params = {"C": 1.0, "cv_folds": 0, "cv_macro_f1": None}
        else:
            search = GridSearchCV(
                pipeline,
                {"logisticregression__C": list(inverse_regularisation)},
                scoring="f1_macro",
                cv=folds,
            ).fit(_stack_inputs(select), select.labels)
            model = search.best_estimator_
            params = {
                "C": float(search.best_params_["logisticregression__C"]),
                "cv_folds": folds.get_n_splits(),
                "cv_macro_f1": float(search.best_score_),
            }
    return Fitted(
        params,
        lambda data: _full_probabilities(model, _stack_inputs(data), data.num_classes),
        state=_pipeline_state(model),
    )


def _concatenated_features(data: FusionData) -> np.ndarray:
    return np.concatenate([f.astype(np.float32) for f in data.features], axis=1)


def feature_mlp(
    select: FusionData,
    train: FusionData | None = None,
    *,
    hidden_sizes: Sequence[int] = (256,),
    weight_decay: float = 1e-4,
    learning_rate: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 200,
    patience: int = 20,
    seed: int = 0,
) -> Fitted:
    """Feature-level fusion: an MLP on the frozen members' concatenated pooled features.

    Trained on the training split, one epoch per step, each epoch in a new order (sklearn's own
    shuffle repeats one order in every `partial_fit` after the first); the epoch with the best
    macro F1 on the selection split is kept (early stopping after `patience` epochs without
    improvement). One BLAS thread, as stacking: the same numbers whatever the machine's core count.
    """
    if train is None:
        raise ValueError(
            "feature_mlp needs the members' outputs on the training split (config key "
            "train_split); export it, or drop feature_mlp from config key strategies."
        )
    import threadpoolctl
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(_concatenated_features(train))
    train_inputs = scaler.transform(_concatenated_features(train))
    select_inputs = scaler.transform(_concatenated_features(select))
    classes = np.arange(train.num_classes)
    mlp = MLPClassifier(
        hidden_layer_sizes=tuple(hidden_sizes),
        alpha=weight_decay,
        learning_rate_init=learning_rate,
        batch_size=min(batch_size, len(train_inputs)),
        shuffle=False,  # shuffled below, anew each epoch
        random_state=seed,
    )
    epoch_orders = np.random.default_rng(seed)
    best_model, best_score, best_epoch = None, -1.0, 0
    with threadpoolctl.threadpool_limits(limits=1):
        for epoch in range(1, max_epochs + 1):
            order = epoch_orders.permutation(len(train_inputs))
            mlp.partial_fit(train_inputs[order], train.labels[order], classes=classes)
            score = macro_f1(select.labels, mlp.predict(select_inputs), train.num_classes)
            if score > best_score:
                best_model, best_score, best_epoch = copy.deepcopy(mlp), score, epoch
            elif epoch - best_epoch >= patience:
                break
    return Fitted(
        {
            "best_epoch": best_epoch,
            "epochs_run": epoch,
            "selection_macro_f1": best_score,
            "input_dim": int(train_inputs.shape[1]),
        },
        lambda data: _full_probabilities(
            best_model, scaler.transform(_concatenated_features(data)), data.num_classes
        ),
        state=_mlp_state(scaler, best_model),
    )


STRATEGIES: dict[str, Callable[..., Fitted]] = {
    "performance_weighted": performance_weighted,
    "uniform_probabilities": uniform_probabilities,
    "uniform_logits": uniform_logits,
    "optimised_weights": optimised_weights,
    "temperature_scaled": temperature_scaled,
    "stacking": stacking,
    "feature_mlp": feature_mlp,
}

PAPER_STRATEGY = "performance_weighted"


def selection_splitter(labels: np.ndarray, folds: int) -> Any:
    """The folds of `cross_validated_macro_f1`: stratified, fewer than `folds` when a class has
    fewer examples (`get_n_splits()` says how many)."""
    from sklearn.model_selection import KFold

    return _stratified_folds(labels, folds, seed=0) or KFold(
        n_splits=max(2, min(folds, len(labels))), shuffle=True, random_state=0
    )


def cross_validated_macro_f1(
    name: str,
    select: FusionData,
    train: FusionData | None = None,
    *,
    folds: int = 5,
    options: dict[str, Any] | None = None,
) -> float:
    """Macro F1 of out-of-fold predictions on the selection split.

    Each fold is predicted by the strategy fitted on the other folds, so strategies with many
    fitted parameters (stacking) and none (uniform) are compared fairly; the in-sample score on
    the split a strategy was fitted on would always favour the former.
    """
    num_examples = len(select.labels)
    splitter = selection_splitter(select.labels, folds)
    with warnings.catch_warnings():
        # A class of one example (a small validation split) is in one fold only: known, and the
        # report says how many folds there were (sklearn warned once per strategy).
        warnings.filterwarnings("ignore", "The least populated class in y", UserWarning)
        splits = list(splitter.split(np.zeros(num_examples), select.labels))
    predictions = np.empty(num_examples, dtype=np.int64)
    for fit_rows, held_out in splits:
        fitted = fit_strategy(name, select.rows(fit_rows), train, **(options or {}))
        predictions[held_out] = fitted.predict_proba(select.rows(held_out)).argmax(-1)
    return macro_f1(select.labels, predictions, select.num_classes)


def fit_strategy(
    name: str, select: FusionData, train: FusionData | None = None, **options: Any
) -> Fitted:
    """Looks `name` up and fits it; `options` are the strategy's own keyword arguments."""
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown fusion strategy {name!r} (config key strategies). "
            f"Choose from: {', '.join(STRATEGIES)}."
        )
    return dataclasses.replace(STRATEGIES[name](select, train, **options), name=name)


# --- serialisable state -----------------------------------------------------------------------


def _pipeline_state(pipeline: Any) -> dict[str, Any]:
    """StandardScaler + LogisticRegression as arrays."""
    scaler, classifier = pipeline[0], pipeline[-1]
    return {
        "scaler_mean": np.asarray(scaler.mean_, np.float64),
        "scaler_scale": np.asarray(scaler.scale_, np.float64),
        "coef": np.asarray(classifier.coef_, np.float64),
        "intercept": np.asarray(classifier.intercept_, np.float64),
        "classes": np.asarray(classifier.classes_, np.int64),
    }


def _mlp_state(scaler: StandardScaler, mlp: MLPClassifier) -> dict[str, Any]:
    """StandardScaler + MLPClassifier as arrays (layer i: `coef_i`, `intercept_i`)."""
    state: dict[str, Any] = {
        "scaler_mean": np.asarray(scaler.mean_, np.float64),
        "scaler_scale": np.asarray(scaler.scale_, np.float64),
        "classes": np.asarray(mlp.classes_, np.int64),
        "num_layers": len(mlp.coefs_),
        "activation": str(mlp.activation),
        "out_activation": str(mlp.out_activation_),
    }
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_, strict=True)):
        state[f"coef_{i}"] = np.asarray(w, np.float64)
        state[f"intercept_{i}"] = np.asarray(b, np.float64)
    return state


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
    "logistic": scipy.special.expit,
}


def _scattered(probabilities: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    full = np.zeros((len(probabilities), num_classes))
    full[:, classes] = probabilities
    return full


def _two_class(positive: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - positive, positive], axis=1)


def predict_from_state(name: str, state: dict[str, Any], data: FusionData) -> np.ndarray:
    """Fused probabilities [N, K] of strategy `name` from its `Fitted.state` alone."""
    if name in ("performance_weighted", "uniform_probabilities", "optimised_weights"):
        return _weighted_probabilities(np.asarray(state["weights"]))(data)
    if name == "uniform_logits":
        return scipy.special.softmax(data.logits.astype(np.float64).mean(0), axis=-1)
    if name == "temperature_scaled":
        temperatures = np.asarray(state["temperatures"], np.float64)
        scaled = data.logits.astype(np.float64) / temperatures[:, None, None]
        return scipy.special.softmax(scaled, axis=-1).mean(axis=0)
    if name == "stacking":
        if "constant_class" in state:
            constant = np.eye(data.num_classes)[int(state["constant_class"])]
            return np.broadcast_to(constant, (data.logits.shape[1], data.num_classes))
        inputs = (_stack_inputs(data) - state["scaler_mean"]) / state["scaler_scale"]
        scores = inputs @ np.asarray(state["coef"]).T + state["intercept"]
        if scores.shape[1] == 1:  # binary: sklearn's logistic on the one decision function
            probabilities = _two_class(scipy.special.expit(scores[:, 0]))
        else:
            probabilities = scipy.special.softmax(scores, axis=1)
        return _scattered(probabilities, np.asarray(state["classes"]), data.num_classes)
    if name == "feature_mlp":
        x = (_concatenated_features(data).astype(np.float64) - state["scaler_mean"])
        x = x / state["scaler_scale"]
        layers = int(state["num_layers"])
        hidden = _ACTIVATIONS[str(state["activation"])]
        for i in range(layers):
            x = x @ state[f"coef_{i}"] + state[f"intercept_{i}"]
            if i < layers - 1:
                x = hidden(x)
        if str(state["out_activation"]) == "logistic":
            probabilities = _two_class(scipy.special.expit(x[:, 0]))
        else:
            probabilities = scipy.special.softmax(x, axis=1)
        return _scattered(probabilities, np.asarray(state["classes"]), data.num_classes)
    raise ValueError(
        f"Unknown fusion strategy {name!r}; choose from: {', '.join(STRATEGIES)}."
    )

