"""The rooms of the house import downward only (design.md), and the light ones stay light.

The rank table is the design's "may import" column made checkable: a module may import modules
of a lower rank, and modules of its own package (without cycles). Every import counts, including
those inside functions, so no cycle hides in a lazy import.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]

# Lower ranks are lower rooms. A module not listed takes its package's rank.
RANKS = {
    "cer_jax.errors": -1,  # the error types every room raises
    "cer_jax.paths": -1,  # path and file-error helpers every room uses (etils only)
    "cer_jax.huge_pages": 0,
    "cer_jax.metrics": 0,
    "cer_jax.plots": 0,
    "cer_jax.sharding": 0,
    "cer_jax.models": 0,
    "cer_jax.faces": 0,
    "cer_jax.fusion.config": 0,
    "cer_jax.cli": 1,
    "cer_jax.config_loading": 0,  # finds config files; parses overrides for cli
    "cer_jax.pretrained": 1,
    "cer_jax.train_state": 1,
    "cer_jax.optim": 1,
    "cer_jax.fusion.strategies": 1,
    "cer_jax.fusion.report": 1,
    "cer_jax.fusion.bootstrap": 2,
    "cer_jax.synthetic": 2,
    "cer_jax.steps": 2,
    "cer_jax.data": 3,
    "cer_jax.checkpointing": 3,
    "cer_jax.config_base": 4,
    "cer_jax.configs": 5,
    "cer_jax.evaluate": 4,
    "cer_jax.warm_start": 4,
    "cer_jax.export": 5,
    "cer_jax.trainer": 6,
    "cer_jax.bench": 6,
    "cer_jax.bench.faces": 10,  # times cer_jax.predict end to end
    "cer_jax.ensemble": 5,
    "cer_jax.fusion.members": 6,
    "cer_jax.fusion.evaluator": 7,
    "cer_jax.fusion": 0,
    "cer_jax.predict": 9,
    "cer_jax.train": 10,
    "cer_jax.fuse": 10,
    "cer_jax.demo": 10,
    "tfds_rafdb": -1,  # layout: RAF-DB's names and sizes (numpy, etils only)
    "tfds_rafdb.rafdb": 0,  # the TFDS builder
}
PACKAGES = ("cer_jax.models", "cer_jax.pretrained", "cer_jax.data", "cer_jax.bench",
            "tfds_rafdb")


def _module_files() -> dict[str, pathlib.Path]:
    files = {}
    for top in ("cer_jax", "tfds_rafdb"):
        for path in (ROOT / top).rglob("*.py"):
            if path.name.endswith("_test.py"):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    for path in (ROOT / "configs").glob("*.py"):
        files[f"cer_jax.configs.{path.stem}".removesuffix(".__init__")] = path
    return files


def _rank(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    raise AssertionError(f"{module} has no rank in tests/test_architecture.py: add it")


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` / `from ..y import z`: relative to this package
                package = path.relative_to(ROOT).parent.parts
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _package(module: str) -> str | None:
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), None)


def test_imports_point_down_the_rooms():
    files = _module_files()
    modules = set(files)
    upward = []
    graph = {}
    for module, path in sorted(files.items()):
        graph[module] = _imports(path, modules) - {module}
        for target in graph[module]:
            same_package = _package(module) is not None and _package(module) == _package(target)
            parent = module.startswith(target + ".")  # a submodule importing its package
            if not (same_package or parent) and _rank(target) >= _rank(module):
                upward.append(f"{module} (rank {_rank(module)}) imports {target} "
                              f"(rank {_rank(target)})")
    assert not upward, "\n".join(upward)

    # No cycles at all, lazy imports and packages included (submodule -> its own package's
    # __init__ re-exports are the one allowed back edge).
    def visit(module: str, stack: list[str]) -> None:
        for target in graph.get(module, ()):
            if module.startswith(target + "."):
                continue
            if target in stack:
                raise AssertionError(" -> ".join([*stack[stack.index(target):], target]))
            visit(target, [*stack, target])

    for module in graph:
        visit(module, [module])


# (module, modules it must not pull in when imported alone). The trainer covers the rooms below
# it (steps, checkpointing, evaluate, export): none of them may import TensorFlow either.
LIGHT = {
    "cer_jax.models": ("tensorflow", "torch", "cer_jax.data", "cer_jax.config_base",
                       "cer_jax.train_state"),
    "cer_jax.trainer": ("tensorflow", "cer_jax.fusion.evaluator"),
    "cer_jax.config_base": ("tensorflow",),
    "cer_jax.fusion.evaluator": ("tensorflow", "cer_jax.trainer", "matplotlib.pyplot"),
    # What cer_jax.predict loads needs neither TensorFlow nor TFDS.
    "cer_jax.ensemble": ("tensorflow", "tensorflow_datasets", "cer_jax.data"),
    "cer_jax.predict": ("tensorflow", "tensorflow_datasets", "torch", "cer_jax.data"),
    # The step benchmark runs on a bare accelerator host (bench/accelerator.sh).
    "cer_jax.bench.main": ("tensorflow", "tensorflow_datasets", "torch"),
    "cer_jax.bench.throughput": ("tensorflow", "tensorflow_datasets", "torch"),
    "tfds_rafdb.rafdb": ("cer_jax",),
}


def test_importing_a_room_alone_stays_light():
    """Each in a fresh interpreter (all started at once: start-up dominates)."""
    runs = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import sys, {module}\n"
             f"print(','.join(m for m in {forbidden!r} if m in sys.modules))"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        for module, forbidden in LIGHT.items()
    }
    for module, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-2000:]
        assert out.strip() == "", f"importing {module} alone imported {out.strip()}"
