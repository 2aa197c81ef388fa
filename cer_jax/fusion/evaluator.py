"""The fusion evaluator: `fuse(config)` loads and checks the members, fits and scores every
strategy on the selection split, writes the report and the ensemble artefact.

The command line is `python -m cer_jax.fuse` (see there); the demo calls `fuse` directly.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from cer_jax import checkpointing, paths, sharding
from cer_jax import ensemble as ensemble_lib
from cer_jax.errors import UserError
from cer_jax.fusion import bootstrap as bootstrap_lib
from cer_jax.fusion import config as config_lib
from cer_jax.fusion import members as members_lib
from cer_jax.fusion import report as report_lib
from cer_jax.fusion import strategies as strategies_lib
from cer_jax.metrics import classification_metrics
from tfds_rafdb import layout

ENSEMBLE_DIR = "ensemble"


class FusionConfigError(UserError):
    """A fusion config value that cannot work."""


class FusionWriteError(UserError):
    """The report could not be written to --out (a full disk, no permission)."""


def load_default_config() -> ml_collections.ConfigDict:
    """The default fusion config (cer_jax.fusion.config), for callers without flags."""
    return config_lib.get_config()


def _split_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _check_places(workdirs: Sequence[str], out: str) -> None:
    """Each member once (twice would double its weight), and the report neither in a member's
    workdir (it would replace the member's TensorBoard events) nor on a file; before any work."""
    seen = {}
    for workdir in workdirs:
        key = paths.same_place(workdir)
        if key in seen:
            first = seen[key]
            same = "" if first == workdir else f" (as {first})"
            raise FusionConfigError(
                f"Member workdir {workdir} is given twice in --workdirs{same} (config key "
                "workdirs): fusing it twice would double its weight; list each member once.")
        seen[key] = workdir
    member = seen.get(paths.same_place(out))
    if member is not None:
        raise FusionConfigError(
            f"--out={out} (config key out) is the member workdir {member}: the report would "
            "replace that member's TensorBoard events; give it a folder of its own, e.g. "
            "--out=runs/fusion.")
    blocker = paths.file_in_the_way(out)
    if blocker is not None:
        raise FusionConfigError(
            f"--out={out} (config key out): {blocker} is a file, not a folder; give the report "
            "a folder, e.g. --out=runs/fusion.")


def _check_config(config: ml_collections.ConfigDict) -> None:
    defaults = config_lib.get_config()
    missing = [key for key, value in defaults.items()
               if key not in config and not isinstance(value, ml_collections.ConfigDict)]
    if missing:
        raise FusionConfigError(
            f"--config is not a fusion config (it has no key {', '.join(missing)}); use "
            "--config=configs/fusion.py (a training config such as configs/vit.py goes to "
            "python -m cer_jax.train).")
    workdirs = _split_list(config.workdirs)
    if not workdirs:
        raise FusionConfigError("No members to fuse: set --workdirs=A,B,C (config key workdirs).")
    if not config.out:
        raise FusionConfigError("No report directory: set --out=DIR (config key out).")
    _check_places(workdirs, config.out)
    if config.select_on not in config.eval_splits:
        raise FusionConfigError(
            f"config key select_on={config.select_on!r} must be one of the reported splits "
            f"(config key eval_splits={list(config.eval_splits)})."
        )
    if config.selection_folds < 2:
        raise FusionConfigError(
            f"config key selection_folds={config.selection_folds} must be >= 2 (folds of the "
            "select_on split that choose the best strategy).")
    samples = config.bootstrap_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise FusionConfigError(
            f"config key bootstrap_samples={samples!r} must be a whole number >= 0 (resamples "
            "of each split for the confidence intervals; 0 = point figures only).")
    if isinstance(config.bootstrap_seed, bool) or not isinstance(config.bootstrap_seed, int) \
            or config.bootstrap_seed < 0:
        raise FusionConfigError(
            f"config key bootstrap_seed={config.bootstrap_seed!r} must be a whole number >= 0.")
    if not 0 < config.bootstrap_confidence < 1:
        raise FusionConfigError(
            f"config key bootstrap_confidence={config.bootstrap_confidence!r} must be between 0 "
            "and 1 (e.g. 0.95 for 95 % intervals).")
    if not _split_list(config.strategies):
        raise FusionConfigError(
            "No fusion strategy: set --config.strategies=A,B (config key strategies) to some of: "
            f"{', '.join(strategies_lib.STRATEGIES)}.")
    for name in _split_list(config.strategies):
        if name not in strategies_lib.STRATEGIES:
            raise FusionConfigError(
                f"Unknown fusion strategy {name!r} in config key strategies; "
                f"choose from: {', '.join(strategies_lib.STRATEGIES)}."
            )
        try:
            strategies_lib.check_options(name, _options(config, name), len(workdirs))
        except ValueError as e:
            raise FusionConfigError(str(e)) from e


def _options(config: ml_collections.ConfigDict, strategy: str) -> dict[str, Any]:
    return config[strategy].to_dict() if strategy in config else {}


def _fit(
    config: ml_collections.ConfigDict,
    strategy: str,
    data: dict[str, strategies_lib.FusionData],
    subset: Sequence[int] | None = None,
) -> strategies_lib.Fitted:
    """Fits `strategy` on the selection split (and the training split, if exported)."""
    def pick(split: str) -> strategies_lib.FusionData | None:
        if split not in data:
            return None
        return data[split] if subset is None else data[split].subset(subset)

    return strategies_lib.fit_strategy(
        strategy, pick(config.select_on), pick(config.train_split), **_options(config, strategy)
    )


def _ablation(
    config: ml_collections.ConfigDict,
    strategy: str,
    names: Sequence[str],
    data: dict[str, strategies_lib.FusionData],
) -> list[dict[str, Any]]:
    """The strategy refitted on every non-empty subset of the members."""
    rows = []
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(range(len(names)), size):
            fitted = _fit(config, strategy, data, subset)
            scores = {}
            for split in config.eval_splits:
                split_data = data[split].subset(subset)
                metrics = classification_metrics(
                    split_data.labels,
                    fitted.predict_proba(split_data).argmax(-1),
                    split_data.num_classes,
                )
                scores[split] = {key: metrics[key] for key in ("accuracy", "macro_f1")}
            rows.append({"members": [names[i] for i in subset], "metrics": scores})
    return rows


def training_leaks(
    members: Sequence[members_lib.Member], select_on: str, eval_splits: Sequence[str],
) -> list[str]:
    """Where a member's own training saw a split that fusion treats as unseen: it chose its best
    checkpoint on a reported split other than `select_on`, or the split it was fitted on (its
    dataset.train_split) is a reported split or shares images with one (RAF-DB's `train` holds
    `validation`; by file name, so not for a `folder` dataset, or by RAF-DB's split rule when
    that split was not exported). Fusion's choices or its test
    numbers are then optimistic; the report says so."""
    leaks = []
    for member in members:
        try:
            best_split = checkpointing.load_config(member.workdir).checkpoint.best_split
        except (checkpointing.WorkdirError, AttributeError, KeyError):
            best_split = None  # an export-only workdir: nothing to read
        if best_split in eval_splits and best_split != select_on:
            leaks.append(f"member {member.name} chose its best checkpoint on {best_split} "
                         f"(checkpoint.best_split)")
        trained_split = members_lib.member_train_split(member.workdir)
        if trained_split in eval_splits:
            leaks.append(f"member {member.name} was trained on {trained_split}, a reported split")
            continue
        trained_on = member.outputs.get(trained_split, {}).get("file_names")
        if trained_on is None:  # not exported (export.splits): what RAF-DB's splits hold
            if str(member.info.get("dataset", "")).startswith("rafdb/"):
                leaks += [f"member {member.name} was trained on {trained_split}, which holds "
                          f"the {split} images" for split in layout.SPLITS_WITHIN.get(
                              trained_split, ()) if split in eval_splits]
            continue
        if not member.names_span_splits:
            continue
        for split in eval_splits:
            if split in member.outputs:
                shared = np.intersect1d(trained_on, member.outputs[split]["file_names"]).size
                if shared:
                    leaks.append(f"member {member.name} was trained on {trained_split}, which "
                                 f"holds {shared} of the {split} images")
    return leaks


def unfinished_members(members: Sequence[members_lib.Member]) -> list[str]:
    """Members whose training stopped before its last step (halted or preempted): fused as
    they are, but their best checkpoint is not what the finished run would give."""
    notes = []
    for member in members:
        stopped = checkpointing.stopped_early(member.workdir)  # None for an export-only one
        if stopped is not None:
            notes.append(f"member {member.name} stopped {stopped} (halted or "
                         f"preempted); run python -m cer_jax.train on {member.workdir} again to "
                         "finish it")
    return notes


def identical_members(names: Sequence[str],
                      data: dict[str, strategies_lib.FusionData]) -> list[str]:
    """Members whose logits are the same on every example of every split: one model given
    twice (a copied workdir, which --workdirs cannot tell from another member) counts double
    in every fusion; two trainings never agree to the last bit."""
    notes = []
    for i, j in itertools.combinations(range(len(names)), 2):
        if all(np.array_equal(split.logits[i], split.logits[j]) for split in data.values()):
            notes.append(f"members {names[i]} and {names[j]} have the same logits on every "
                         "example: one model given twice (a copied workdir?) counts double; "
                         "list it once")
    return notes


def fuse(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Loads and checks the members, fits and scores every strategy, writes the report.

    Returns the report (what report.json holds).
    """
    # Every process checks the members before any collective (a re-export, the ensemble's
    # restore): a workdir that one host lacks stops every host, not that host alone.
    with sharding.stop_together("the fusion's checks"):
        _check_config(config)
        config = copy.deepcopy(config)
        config.eval_splits = tuple(dict.fromkeys(config.eval_splits))  # each reported once
        workdirs = _split_list(config.workdirs)
        # Each once: fitted, scored and reported once.
        strategy_names = list(dict.fromkeys(_split_list(config.strategies)))
        # Only feature_mlp is fitted on a training split: members trained on different splits
        # (or export-only ones that do not say) fuse by every other strategy.
        if not config.train_split and "feature_mlp" in strategy_names:
            config.train_split = members_lib.common_train_split(workdirs)
        eval_splits = list(config.eval_splits)
        needed = list(dict.fromkeys(
            eval_splits + ([config.train_split] if "feature_mlp" in strategy_names else [])
        ))
        if "feature_mlp" in strategy_names and config.train_split in eval_splits:
            raise FusionConfigError(
                f"config key train_split={config.train_split!r} (empty: the members' own) is "
                f"a reported split (config key eval_splits={eval_splits}): feature_mlp would be "
                "fitted on the examples it is chosen and scored on. Give it the members' "
                "training split (e.g. train_fit), or drop feature_mlp from config key "
                "strategies.")
        split_keys = {split: "eval_splits" for split in eval_splits}
        split_keys.setdefault(config.train_split, "train_split")
        members_lib.check_members(workdirs, needed, split_keys=split_keys)
    if config.select_on == "test":
        logging.warning("Choosing fusion weights and hyper-parameters on the test split "
                        "(select_on=test, the paper's protocol): test numbers are optimistic.")
    members = members_lib.load_members(
        workdirs, needed, reexport=config.reexport, split_keys=split_keys, checked=True
    )
    class_names, data = members_lib.align_members(members, needed)
    if len(data[config.select_on].labels) < 2:  # else sklearn's KFold fails with a traceback
        raise FusionConfigError(
            f"The {config.select_on} split (config key select_on) holds "
            f"{len(data[config.select_on].labels)} example: fusion chooses its strategy by "
            "cross-validation on it, which needs at least 2; give the members a larger "
            f"{config.select_on} split, or choose on another (--select_on).")
    if "feature_mlp" in strategy_names:
        data[config.train_split] = _held_out_of_reported_splits(config, members, data)
    num_classes = len(class_names)
    leaks = training_leaks(members, config.select_on, eval_splits)
    for leak in leaks:
        logging.warning("Not held out: %s.", leak)
    unfinished = unfinished_members(members)
    for note in unfinished:
        logging.warning("Unfinished: %s.", note)
    identical = identical_members([m.name for m in members], data)
    for note in identical:
        logging.warning("Identical: %s.", note)

    # Every system's predicted classes, keyed by ("member" | "strategy", name): the bootstrap
    # finds each system's own (by position, a strategy named twice once shifted every system's).
    predictions: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def scores(system: tuple[str, str],
               probabilities_by_split: dict[str, np.ndarray]) -> dict[str, Any]:
        if system in predictions:
            raise RuntimeError(f"fusion scored {system} twice")
        predictions[system] = {s: p.argmax(-1) for s, p in probabilities_by_split.items()}
        return {
            split: classification_metrics(
                data[split].labels, predicted, num_classes, class_names
            )
            for split, predicted in predictions[system].items()
        }

    absent_classes = {}
    for split in eval_splits:
        counts = np.bincount(data[split].labels, minlength=num_classes)
        absent = [name for name, count in zip(class_names, counts, strict=True) if not count]
        if absent:
            absent_classes[split] = absent
            logging.warning("%s", report_lib.absent_classes_note(absent, split))

    member_rows = []
    for index, member in enumerate(members):
        member_rows.append({
            "name": member.name,
            "workdir": member.workdir,
            "model": member.info.get("model"),
            "step": member.info.get("step"),
            "seed": member.info.get("seed"),  # None: an export from before seeds were recorded
            "data_seed": member.info.get("data_seed"),
            "metrics": scores(("member", member.name),
                              {s: data[s].logits[index] for s in eval_splits}),
        })
        logging.info("member %s: %s", member.name, _headline(member_rows[-1]["metrics"]))

    strategy_rows, fitted = {}, {}
    for name in strategy_names:
        fitted[name] = _fit(config, name, data)
        strategy_rows[name] = {
            "params": fitted[name].params,
            "selection_cv_macro_f1": strategies_lib.cross_validated_macro_f1(
                name, data[config.select_on], data.get(config.train_split),
                folds=config.selection_folds, options=_options(config, name),
            ),
            "metrics": scores(("strategy", name),
                              {s: fitted[name].predict_proba(data[s]) for s in eval_splits}),
        }
        logging.info("strategy %s: %s", name, _headline(strategy_rows[name]["metrics"]))

    # The best strategy has the best out-of-fold macro F1 on the selection split (then the
    # earlier one in config key strategies): in-sample scores would favour stacking.
    best = max(
        strategy_names,
        key=lambda n: (strategy_rows[n]["selection_cv_macro_f1"], -strategy_names.index(n)),
    )
    ablation = {}
    if config.ablation:
        names = [m.name for m in members]
        for name in dict.fromkeys([strategies_lib.PAPER_STRATEGY, best]):
            if name in strategy_names:
                ablation[name] = _ablation(config, name, names, data)

    bootstrap = None
    if config.bootstrap_samples:
        bootstrap = _bootstrap(config, data, predictions, member_rows, strategy_rows, best)

    report = {
        "class_names": class_names,
        "select_on": config.select_on,
        "eval_splits": eval_splits,
        "absent_classes": absent_classes,  # {split: classes without an example there}
        "training_leaks": leaks,
        "unfinished_members": unfinished,
        "identical_members": identical,
        "paper_strategy": strategies_lib.PAPER_STRATEGY,
        "best_strategy": best,
        "selection_cv_folds": strategies_lib.selection_splitter(
            data[config.select_on].labels, config.selection_folds).get_n_splits(),
        "members": member_rows,
        "strategies": strategy_rows,
        "ablation": ablation,
        "bootstrap": bootstrap,  # None: config key bootstrap_samples=0
        "config": config.to_dict(),
    }
    # The earlier fusion's artefact matches the earlier report only: it goes before the new
    # report comes, so that a run stopped while it restores the members for the new one
    # (minutes; preempted, out of memory, Ctrl-C) leaves none beside the new report.
    ensemble_dir = epath.Path(config.out) / ENSEMBLE_DIR
    if ensemble_lib.remove_earlier(ensemble_dir, "the fusion writes its new one after the report"):
        logging.info("Removed the earlier ensemble at %s: it belongs to the earlier report.",
                     ensemble_dir)
    # Every process computes the same report; one writes it, and every process learns whether
    # it could: on several hosts the others would go on alone into the ensemble's restore.
    sharding.on_process_0(
        lambda: report_lib.write_report(config.out, report), "the writing of the fusion report",
        where=f"writes it to {config.out}",
        io_error=lambda reason: FusionWriteError(
            f"--out={config.out} (config key out): the report could not be written there "
            f"({reason}); free space there or give a folder this user may write, and run the "
            "fusion again."))
    # The best strategy with the members' best checkpoints: the self-contained artefact that
    # python -m cer_jax.predict loads (none if a member has no checkpoint). Every process
    # restores the checkpoints (a collective); process 0 writes.
    ensemble_lib.write_from_fusion(ensemble_dir, members, fitted[best], class_names)
    return report


def _bootstrap(
    config: ml_collections.ConfigDict,
    data: dict[str, strategies_lib.FusionData],
    predictions: dict[tuple[str, str], dict[str, np.ndarray]],
    member_rows: list[dict[str, Any]],
    strategy_rows: dict[str, dict[str, Any]],
    best: str,
) -> dict[str, Any]:
    """Adds `accuracy_ci` and `macro_f1_ci` to every system's metrics on every reported split;
    returns the report's `bootstrap`: how, and the paired intervals of the best and the paper's
    fusion minus each member (the best member: highest macro F1 on select_on). `predictions`
    holds each system's predicted classes by split, keyed by ("member" | "strategy", name)."""
    confidence = config.bootstrap_confidence
    keys = [("member", row["name"]) for row in member_rows]
    keys += [("strategy", name) for name in strategy_rows]
    if len(set(keys)) != len(keys) or set(keys) != set(predictions):
        raise RuntimeError(f"fusion's systems {keys} are not those it scored "
                           f"{list(predictions)}")
    systems = [row["metrics"] for row in member_rows]
    systems += [row["metrics"] for row in strategy_rows.values()]
    names = [row["name"] for row in member_rows]
    fusions = [n for n in dict.fromkeys([best, strategies_lib.PAPER_STRATEGY])
               if n in strategy_rows]
    best_member = max(range(len(names)), key=lambda i: (
        member_rows[i]["metrics"][config.select_on]["macro_f1"], -i))
    differences = []
    for split in config.eval_splits:
        resampled = bootstrap_lib.resampled_scores(
            data[split].labels, [predictions[key][split] for key in keys],
            data[split].num_classes,
            config.bootstrap_samples, config.bootstrap_seed)
        for index, metrics in enumerate(systems):
            for metric in bootstrap_lib.METRICS:
                metrics[split][f"{metric}_ci"] = bootstrap_lib.interval(
                    resampled[metric][index], confidence)
        for fusion in fusions:
            fused = len(names) + list(strategy_rows).index(fusion)
            for member, name in enumerate(names):
                row = {"split": split, "fusion": fusion, "member": name,
                       "best_member": member == best_member}
                for metric in bootstrap_lib.METRICS:
                    row[metric] = (systems[fused][split][metric]
                                   - systems[member][split][metric])
                    row[f"{metric}_ci"] = bootstrap_lib.interval(
                        resampled[metric][fused] - resampled[metric][member], confidence)
                differences.append(row)
    return {
        "samples": config.bootstrap_samples,
        "confidence": confidence,
        "seed": config.bootstrap_seed,
        "best_member": names[best_member],
        "fusion_minus_member": differences,
    }


def _held_out_of_reported_splits(
    config: ml_collections.ConfigDict,
    members: Sequence[members_lib.Member],
    data: dict[str, strategies_lib.FusionData],
) -> strategies_lib.FusionData:
    """The training split's examples that are in no reported split: feature_mlp is fitted on
    them, so that its selection and test scores stay out-of-sample."""
    train = data[config.train_split]
    rows = members_lib.rows_in_no_other_split(members, config.train_split, config.eval_splits)
    if rows.size == 0:
        raise FusionConfigError(
            f"Every example of config key train_split={config.train_split!r} is in a reported "
            f"split ({', '.join(config.eval_splits)}): feature_mlp has nothing held out to be "
            "fitted on. Give it the members' training split (e.g. train_fit), or drop "
            "feature_mlp from config key strategies.")
    if rows.size < len(train.labels):
        logging.warning(
            "feature_mlp is fitted on the %d of the %d %s examples that are in no reported split "
            "(%s).", rows.size, len(train.labels), config.train_split,
            ", ".join(config.eval_splits))
    return train.rows(rows)


def _headline(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{split} acc {m['accuracy']:.4f} macro F1 {m['macro_f1']:.4f}"
        for split, m in metrics.items()
    )


def resolve_config(
    config: ml_collections.ConfigDict,
    workdirs: Sequence[str] | None = None,
    out: str | None = None,
    select_on: str | None = None,
) -> ml_collections.ConfigDict:
    """The config with the command-line shorthands applied."""
    config = copy.deepcopy(config)
    if workdirs is not None:
        config.workdirs = ",".join(workdirs)
    if out is not None:
        config.out = out
    # `--config.out=~/x` is not expanded by the shell (nor by ml_collections): the home folder,
    # not a folder named `~` in the working directory. Otherwise the user's spelling is kept.
    if config.out and not paths.is_remote(config.out):
        config.out = os.path.expanduser(config.out)
    if select_on is not None:
        config.select_on = select_on
    return config
