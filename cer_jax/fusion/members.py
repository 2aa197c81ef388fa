"""Ensemble members: each trainer workdir's exported outputs, checked and aligned by file name.

A member is read from `<workdir>/export/`. When the workdir has a best checkpoint, the export is
(re)written from it first unless it is current (`cer_jax.export.export_is_current`), so fusion
always sees the best step's outputs. A workdir without checkpoints but with an export (e.g. one
copied from another machine) is used as it is.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from cer_jax.fusion.strategies import FusionData


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


def _has_best_checkpoint(workdir: str) -> bool:
    best = os.path.join(workdir, "best")
    return os.path.isdir(best) and bool(os.listdir(best))


def load_member(workdir: str, splits: Sequence[str], *, reexport: bool = False) -> Member:
    """Loads `workdir`'s export, exporting the best checkpoint first when the export is stale,
    missing, lacks one of `splits`, or `reexport` is set."""
    from cer_jax import export  # the trainer's module: pulls in the models and Orbax

    if not os.path.isdir(workdir):
        raise FileNotFoundError(
            f"Member workdir {workdir} does not exist (flag --workdirs / config key workdirs); "
            "pass the directories that `python -m cer_jax.train` wrote."
        )
    has_export = os.path.isfile(os.path.join(workdir, "export", "export.json"))
    if _has_best_checkpoint(workdir):
        if reexport or not export.export_is_current(workdir):
            logging.info("Exporting the best checkpoint of %s", workdir)
            export.export_workdir(workdir)
    elif not has_export:
        raise FileNotFoundError(
            f"Member workdir {workdir} has neither a best checkpoint (best/) nor an export "
            "(export/export.json); train the model into it first."
        )
    else:
        logging.info("%s has no checkpoints: using its export as it is", workdir)
    info, outputs = export.load_export(workdir)
    missing = [split for split in splits if split not in outputs]
    if missing and _has_best_checkpoint(workdir):
        logging.info("Exporting splits %s of %s", missing, workdir)
        export.export_workdir(workdir, splits=sorted({*outputs, *splits}))
        info, outputs = export.load_export(workdir)
        missing = [split for split in splits if split not in outputs]
    if missing:
        raise ValueError(
            f"Member workdir {workdir} has no exported {', '.join(missing)} split "
            f"(it has: {', '.join(sorted(outputs))}); export it with "
            f"cer_jax.export.export_workdir({workdir!r}, splits=[...]) or change config keys "
            "eval_splits / train_split."
        )
    return Member(name=str(info["model"]), workdir=workdir, info=info, outputs=outputs)


def load_members(
    workdirs: Sequence[str], splits: Sequence[str], *, reexport: bool = False
) -> list[Member]:
    """Loads every member; names are the model names, made unique with the workdir's name."""
    members = [load_member(w, splits, reexport=reexport) for w in workdirs]
    counts = collections.Counter(m.name for m in members)
    named = []
    for index, member in enumerate(members):
        name = member.name
        if counts[name] > 1:
            name = f"{name}:{os.path.basename(os.path.normpath(member.workdir)) or index}"
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
            raise ValueError(
                f"Members {first.describe()} and {other.describe()} have different label "
                f"spaces: only in {first.name}: [{_preview(only_a)}]; only in {other.name}: "
                f"[{_preview(only_b)}]. Fuse only models trained on the same dataset config."
            )
        if a != b:
            raise ValueError(
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
        raise ValueError(
            f"Member {member.describe()} lists {split} file names more than once "
            f"({_preview(duplicates)}); its export is corrupt: re-export it."
        )
    return index


def align_members(
    members: Sequence[Member], splits: Sequence[str]
) -> tuple[list[str], dict[str, FusionData]]:
    """Checks the members agree and stacks their outputs per split, rows in the first member's
    file order (rows are matched by file name, never by position)."""
    if not members:
        raise ValueError("No members to fuse (flag --workdirs / config key workdirs is empty).")
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
                raise ValueError(
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
                raise ValueError(
                    f"Members {members[0].describe()} and {member.describe()} disagree on the "
                    f"labels of {disagree.size} {split} file(s) "
                    f"[{_preview([order[i] for i in disagree])}]. Export both from the same "
                    "dataset build."
                )
            member_logits = np.asarray(outputs["logits"])[rows]
            if member_logits.shape[1] != len(class_names):
                raise ValueError(
                    f"Member {member.describe()} has {member_logits.shape[1]} logits per "
                    f"{split} example but {len(class_names)} class names; re-export it."
                )
            logits.append(member_logits)
            features.append(np.asarray(outputs["features"])[rows])
        aligned[split] = FusionData(
            logits=np.stack(logits), features=tuple(features), labels=labels
        )
    return class_names, aligned
