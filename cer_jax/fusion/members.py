"""Ensemble members: each trainer workdir's exported outputs, checked and aligned by file name.

A member is read from `<workdir>/export/`. When the workdir has a best checkpoint, the export is
(re)written from it first unless it is current (`cer_jax.export.export_is_current`), so fusion
always sees the best step's outputs. A workdir without checkpoints but with an export (e.g. one
copied from another machine) is used as it is. Workdirs may be local or remote (etils epath).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from cer_jax import checkpointing, export, paths, sharding
from cer_jax.errors import UserError
from cer_jax.fusion.strategies import FusionData


class MemberError(UserError):
    """Members that cannot be fused (missing, disagreeing, or lacking a split)."""


@dataclasses.dataclass(frozen=True)
class Member:
    """One trained model's exported outputs, {split: {"logits", "features", "labels",
    "file_names"}}, and what its export.json says about it."""

    name: str
    workdir: str
    info: dict[str, Any]
    outputs: dict[str, dict[str, np.ndarray]]

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    def describe(self) -> str:
        return f"{self.name} ({self.workdir})"

    @property
    def names_span_splits(self) -> bool:
        """Whether one file name is one image in every split: RAF-DB's are (`train` holds
        `validation`'s train_0001.jpg); a `folder` dataset's are `<class>/<file>` inside each
        split's own folder, so one name in two splits is two images (many exports number the
        files of each split from 0), and sharing cannot be told from names."""
        return self.info.get("dataset") != "folder"


def _require_workdir(workdir: str) -> None:
    path = checkpointing.workdir_path(workdir)
    try:
        is_dir = path.is_dir()
    except paths.io_errors() as e:  # gs:// without access: was a traceback
        raise MemberError(f"{paths.cannot_read(f'Member workdir {workdir}', workdir, e)} "
                          "(flag --workdirs / config key workdirs).") from e
    if not is_dir:
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise MemberError(
            f"Member workdir {workdir} {what} (flag --workdirs / config key workdirs); "
            "pass the directories that `python -m cer_jax.train` wrote."
        )


def _untrained(workdir: str) -> MemberError:
    return MemberError(
        f"Member workdir {workdir} has neither a best checkpoint (best/) nor an export "
        "(export/export.json); train the model into it first."
    )


def _member_splits(workdir: str) -> tuple[str, list[str]] | None:
    """(train split, all splits) of the member's dataset, from its config.json if it has one."""
    if not checkpointing.workdir_path(workdir, checkpointing.CONFIG_FILE).exists():
        return None
    config = checkpointing.load_config(workdir)
    return config.dataset.train_split, sorted(config.dataset_info.split_sizes)


def member_train_split(workdir: str) -> str | None:
    """The split the member was fitted on: dataset.train_split in its config.json, else its
    export's; None when neither says."""
    splits = _member_splits(workdir)
    if splits is not None:
        return splits[0]
    manifest = export.read_manifest(workdir)
    return (manifest or {}).get("train_split") or None


def common_train_split(workdirs: Sequence[str]) -> str:
    """The members' own dataset.train_split (what they were fitted on); they must agree."""
    found = {}
    for workdir in workdirs:
        _require_workdir(workdir)
        split = member_train_split(workdir)
        if split is not None:
            found[workdir] = split
        elif export.read_manifest(workdir) is None:
            raise _untrained(workdir)
    if len(set(found.values())) > 1:
        raise MemberError(
            "Members were trained on different splits ("
            + ", ".join(f"{w}: {s!r}" for w, s in found.items())
            + "); choose the split feature_mlp trains on with --config.train_split=NAME."
        )
    if not found:
        raise MemberError(
            "Cannot tell which split the members were trained on (no config.json or export); "
            "set --config.train_split=NAME."
        )
    return next(iter(found.values()))


def check_member(
    workdir: str, splits: Sequence[str], *, split_keys: dict[str, str] | None = None
) -> None:
    """What `load_member` checks before it exports or reads anything: the workdir exists,
    holds a best checkpoint or an export, and its dataset has `splits`."""
    _require_workdir(workdir)
    member_splits = _member_splits(workdir)
    if member_splits is not None:
        unknown = [s for s in splits if s not in member_splits[1]]
        if unknown:
            keys = split_keys or {}
            key = keys.get(unknown[0], "eval_splits")
            raise MemberError(
                "; ".join(f"config key {keys.get(s, 'eval_splits')}={s!r}" for s in unknown)
                + f": member {workdir}'s dataset has no such split (it has: "
                f"{', '.join(member_splits[1])}). Set --config.{key} to one of those."
            )
    if not checkpointing.holds_best_checkpoint(workdir) and export.read_manifest(workdir) is None:
        raise _untrained(workdir)


def _declared(workdir: str) -> Member | None:
    """The member as its config.json (else its export.json) describes it, before any export:
    its name and class names; None when neither lists class names."""
    if checkpointing.workdir_path(workdir, checkpointing.CONFIG_FILE).exists():
        config = checkpointing.load_config(workdir)
        info = {"class_names": config.get("dataset_info", {}).get("class_names"),
                "member": config.get("member") or config.get("model", {}).get("name")}
    else:
        try:
            info = export.read_manifest(workdir) or {}
        except export.ExportError:  # unreadable: load_member writes it anew or says so
            return None
    if not info.get("class_names"):
        return None
    return Member(name=str(info.get("member") or info.get("model") or workdir), workdir=workdir,
                  info=info, outputs={})


def check_members(
    workdirs: Sequence[str], splits: Sequence[str], *, split_keys: dict[str, str] | None = None
) -> None:
    """What `load_members` checks before it exports or reads anything: each member
    (`check_member`), and that their label spaces agree (`check_label_spaces`, on the class
    names their config.json or export.json lists): otherwise a stale member's export (minutes
    of evaluation) would run before align_members refuses the clash."""
    for workdir in workdirs:
        check_member(workdir, splits, split_keys=split_keys)
    declared = [m for m in map(_declared, workdirs) if m is not None]
    if len(declared) > 1:
        check_label_spaces(declared)


def load_member(
    workdir: str, splits: Sequence[str], *, reexport: bool = False,
    split_keys: dict[str, str] | None = None,
) -> Member:
    """Loads `workdir`'s export (after `check_member`), exporting the best checkpoint first
    when the export is stale, missing, lacks one of `splits`, has a file cut short or missing,
    or `reexport` is set. `split_keys` names the fusion config key that asked for each split,
    for error messages."""
    exported = False
    # Every process decides together, as the export is a collective: a host that read the
    # workdir while its trainer replaced the export (on gs://, object by object) or saved a
    # new best would otherwise export alone while the others read, and every host wait.
    # A listing (slow on gs://): once.
    has_best = sharding.any_process(checkpointing.holds_best_checkpoint(workdir))
    if has_best:
        # A stale, missing or unreadable export is written anew from the checkpoint.
        if sharding.any_process(reexport or not export.export_is_current(workdir)):
            logging.info("Exporting the best checkpoint of %s", workdir)
            export.export_workdir(workdir)
            exported = True
    else:  # check_member found its export
        logging.info("%s has no checkpoints: using its export as it is", workdir)
    try:
        info, outputs = export.load_export(workdir)
        error = None
    except export.ExportError as e:  # a split's file cut short or missing (an interrupted copy)
        error = e
    # Every process decides together: the export is a collective (one host's failed read alone
    # would leave the others waiting in it).
    if not exported and has_best and sharding.any_process(error is not None):
        logging.warning("Exporting the best checkpoint of %s again: a file of its export is "
                        "cut short or missing", workdir)
        export.export_workdir(workdir)
        info, outputs = export.load_export(workdir)
    elif error is not None:
        raise error
    missing = [split for split in splits if split not in outputs]
    if missing and has_best:
        logging.info("Exporting splits %s of %s", missing, workdir)
        export.export_workdir(workdir, splits=sorted({*outputs, *splits}))
        info, outputs = export.load_export(workdir)
        missing = [split for split in splits if split not in outputs]
    if missing:
        # A missing training split is only feature_mlp's need: dropping it is the usual fix.
        keys = split_keys or {}
        change = ("drop feature_mlp from config key strategies (only it needs the training "
                  "split)" if any(keys.get(s) == "train_split" for s in missing)
                  else "change config key eval_splits")
        # Without a best checkpoint here (an export copied from elsewhere), export_workdir on
        # this workdir cannot work: the split is exported where the member was trained.
        export_it = (f"export it with cer_jax.export.export_workdir({workdir!r}, splits=[...])"
                     if has_best else
                     "it has no best checkpoint to export it from (an export copied from "
                     "elsewhere): export it where the member was trained, with "
                     "cer_jax.export.export_workdir(WORKDIR, splits=[...]), and copy that "
                     "export/ here,")
        raise MemberError(
            f"Member workdir {workdir} has no exported {', '.join(missing)} split "
            f"(it has: {', '.join(sorted(outputs))}); {export_it} or {change}."
        )
    for split in splits:
        logits = np.asarray(outputs[split]["logits"])
        bad = int(np.sum(~np.isfinite(logits).all(axis=-1)))
        if bad:  # would be fused as class 0 without a word (argmax of NaN)
            raise MemberError(
                f"Member workdir {workdir}: {bad} of {len(logits)} {split} examples have "
                "non-finite logits (NaN or inf) in its export; its best checkpoint computes "
                "overflowing values: retrain it (e.g. a lower optimizer.lr, or "
                "model.dtype='float32') or leave it out of --workdirs.")
    name = info.get("member") or info["model"]
    return Member(name=str(name), workdir=workdir, info=info, outputs=outputs)


def load_members(
    workdirs: Sequence[str], splits: Sequence[str], *, reexport: bool = False,
    split_keys: dict[str, str] | None = None, checked: bool = False,
) -> list[Member]:
    """Loads every member, all checked first (`check_members`) unless the caller did
    (`checked`: fusion checks them on every process together); names are the configs' member
    names (configs/<member>.py), made unique with the workdir's name."""
    if not checked:  # every member before any export: a bad one costs no other's work
        check_members(workdirs, splits, split_keys=split_keys)
    members = [
        load_member(w, splits, reexport=reexport, split_keys=split_keys) for w in workdirs
    ]
    counts = collections.Counter(m.name for m in members)
    named = []
    for index, member in enumerate(members):
        name = member.name
        if counts[name] > 1:
            name = f"{name}:{checkpointing.workdir_path(member.workdir).name or index}"
        named.append(dataclasses.replace(member, name=name))
    if len({m.name for m in named}) != len(named):
        named = [dataclasses.replace(m, name=f"{m.name}#{i}") for i, m in enumerate(named)]
    return named


def _preview(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _differences(a: Sequence[str], b: Sequence[str]) -> tuple[list[str], list[str]]:
    """(items only in a, items only in b), each in its own order."""
    set_a, set_b = set(a), set(b)
    return [x for x in a if x not in set_b], [x for x in b if x not in set_a]


def check_label_spaces(members: Sequence[Member]) -> list[str]:
    """The shared class names; refuses members whose label space or class order differ."""
    first = members[0]
    for other in members[1:]:
        a, b = first.class_names, other.class_names
        if set(a) != set(b):
            only_a, only_b = _differences(a, b)
            raise MemberError(
                f"Members {first.describe()} and {other.describe()} have different label "
                f"spaces: only in {first.name}: [{_preview(only_a)}]; only in {other.name}: "
                f"[{_preview(only_b)}]. Fuse only models trained on the same dataset config."
            )
        if a != b:
            raise MemberError(
                f"Members {first.describe()} and {other.describe()} list the same classes in a "
                f"different order: {a} vs {b}. Retrain or re-export them with the same class "
                "order."
            )
    return first.class_names


def _row_index(member: Member, split: str) -> dict[str, int]:
    names = [str(n) for n in member.outputs[split]["file_names"]]
    index = {name: row for row, name in enumerate(names)}
    if len(index) != len(names):
        duplicates = [n for n, c in collections.Counter(names).items() if c > 1]
        raise MemberError(
            f"Member {member.describe()} lists {split} file names more than once "
            f"({_preview(duplicates)}); its export is corrupt: re-export it."
        )
    return index


def rows_in_no_other_split(members: Sequence[Member], split: str,
                           others: Sequence[str]) -> np.ndarray:
    """The rows of `split` (in align_members' order) whose file is in none of the `others`
    splits: RAF-DB's `train` holds `validation`, and what a fusion is fitted on must not hold
    what it is chosen or scored on. Every row where names do not span splits (`folder`)."""
    if not members[0].names_span_splits:
        return np.arange(len(members[0].outputs[split]["file_names"]), dtype=np.int64)
    excluded = set()
    for other in others:
        if other != split and other in members[0].outputs:
            excluded.update(str(n) for n in members[0].outputs[other]["file_names"])
    order = _row_index(members[0], split)
    return np.array([row for row, name in enumerate(order) if name not in excluded],
                    dtype=np.int64)


def align_members(
    members: Sequence[Member], splits: Sequence[str]
) -> tuple[list[str], dict[str, FusionData]]:
    """Checks the members agree and stacks their outputs per split, rows in the first member's
    file order (rows are matched by file name, never by position)."""
    if not members:
        raise MemberError("No members to fuse (flag --workdirs / config key workdirs is empty).")
    class_names = check_label_spaces(members)
    aligned = {}
    for split in splits:
        reference = _row_index(members[0], split)
        order = list(reference)
        labels = np.asarray(members[0].outputs[split]["labels"], dtype=np.int64)
        logits, features = [], []
        for member in members:
            index = _row_index(member, split)
            if index.keys() != reference.keys():
                only_first, only_this = _differences(order, list(index))
                raise MemberError(
                    f"Members {members[0].describe()} and {member.describe()} were evaluated on "
                    f"different {split} examples: {len(only_first)} file(s) only in "
                    f"{members[0].name} [{_preview(only_first)}], {len(only_this)} only in "
                    f"{member.name} [{_preview(only_this)}]. Export both from the same dataset "
                    "build."
                )
            rows = np.array([index[name] for name in order], dtype=np.int64)
            outputs = member.outputs[split]
            member_labels = np.asarray(outputs["labels"])[rows]
            disagree = np.flatnonzero(member_labels != labels)
            if disagree.size:
                raise MemberError(
                    f"Members {members[0].describe()} and {member.describe()} disagree on the "
                    f"labels of {disagree.size} {split} file(s) "
                    f"[{_preview([order[i] for i in disagree])}]. Export both from the same "
                    "dataset build."
                )
            member_logits = np.asarray(outputs["logits"])[rows]
            if member_logits.shape[1] != len(class_names):
                raise MemberError(
                    f"Member {member.describe()} has {member_logits.shape[1]} logits per "
                    f"{split} example but {len(class_names)} class names; re-export it."
                )
            logits.append(member_logits)
            features.append(np.asarray(outputs["features"])[rows])
        aligned[split] = FusionData(
            logits=np.stack(logits), features=tuple(features), labels=labels
        )
    return class_names, aligned
