"""Assign converted arrays to an NNX model, checking every name and shape, and report.

Format-specific modules (vit.py, resnet.py, manet.py) only translate a checkpoint's names and
layouts into this model's state paths ('layer1/0/conv1/kernel'); everything about what may be
missing, what is re-initialised and what is an error lives here, once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from cer_jax.errors import UserError


class WeightImportError(UserError):
    """A checkpoint that does not fit the model (missing tensors or wrong shapes)."""


@dataclasses.dataclass
class ImportReport:
    """What a weight import did, for logs and tests."""

    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    reinitialised: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    resized: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"Imported {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.reinitialised)} left at initialisation, "
            f"{len(self.unused)} in the file unused, {len(self.resized)} resized."
        ]
        for title, names in (
            ("left at initialisation (new head)", self.reinitialised),
            ("resized", self.resized),
            ("unused from the file", self.unused),
        ):
            if names:
                lines.append(f"  {title}: {', '.join(names)}")
        return "\n".join(lines)


# Problems a WeightImportError lists before it counts the rest.
_MAX_PROBLEMS_SHOWN = 20


def path_name(path: Iterable[object]) -> str:
    return "/".join(str(p) for p in path)


def model_arrays(model: nnx.Module) -> dict[str, nnx.Variable]:
    """The model's parameters and batch statistics by '/'-joined state path."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {path_name(path): var for path, var in nnx.to_flat_state(state)}


def is_head(name: str, head_names: Iterable[str]) -> bool:
    return any(name == h or name.startswith(h + "/") for h in head_names)


def assign(
    model: nnx.Module,
    arrays: Mapping[str, np.ndarray],
    *,
    source: str,
    head_names: Iterable[str],
    keep_head: bool = False,
    unused: Iterable[str] = (),
    resized: Iterable[str] = (),
    write: bool = True,
) -> ImportReport:
    """Writes `arrays` (keyed by state path) into `model` in place; with `write=False` only
    checks them (`model` may then be abstract, from `nnx.eval_shape`).

    Every backbone parameter / batch statistic must be present with exactly the model's shape;
    otherwise nothing is written and a WeightImportError names each problem. Head tensors are
    left at their initialisation unless `keep_head` and their shapes match (a warning gives both
    shapes when `keep_head` is set and they do not).
    """
    head_names = tuple(head_names)
    targets = model_arrays(model)
    report = ImportReport(source=source, unused=sorted(unused), resized=sorted(resized))
    problems: list[str] = []
    updates: dict[str, np.ndarray] = {}
    head_mismatches: list[str] = []
    for name, var in sorted(targets.items()):
        target_shape = tuple(var.get_value().shape)
        if is_head(name, head_names):
            value = arrays.get(name)
            if keep_head and value is not None and tuple(value.shape) == target_shape:
                updates[name] = value
            else:
                if keep_head and value is not None:  # asked for, but of another class count
                    head_mismatches.append(
                        f"{name} {tuple(np.shape(value))} in the checkpoint, {target_shape} in "
                        "the model")
                report.reinitialised.append(name)
            continue
        if name not in arrays:
            problems.append(f"missing: {name} {target_shape}")
            continue
        value = np.asarray(arrays[name])
        if tuple(value.shape) != target_shape:
            problems.append(f"shape mismatch: {name} is {target_shape} in the model, "
                            f"{tuple(value.shape)} in the checkpoint")
            continue
        updates[name] = value
    extra = sorted(set(arrays) - set(targets))
    problems += [f"not in the model: {name} {tuple(np.shape(arrays[name]))}" for name in extra]
    if problems:
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        if len(problems) > len(shown):  # a file of another network would list every tensor
            shown.append(f"... and {len(problems) - len(shown)} more")
        raise WeightImportError(
            f"{source} does not fit this model ({len(problems)} problems; check the model "
            "variant in config.model matches the checkpoint):\n  " + "\n  ".join(shown)
        )
    if not write:
        report.loaded = list(updates)
        return report
    if head_mismatches:  # keep_head was asked for: say why the head is new all the same
        logging.getLogger(__name__).warning(
            "%s: keep_head is set, but the head has another class count, so it is left at "
            "initialisation: %s.", source, "; ".join(head_mismatches))
    for name, value in updates.items():
        var = targets[name]
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
        report.loaded.append(name)
    return report
