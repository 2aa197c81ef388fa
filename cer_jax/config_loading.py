"""Load a config file the way the CLI does: `load_config("configs/vit.py:smoke")`.

The path is resolved against the working directory, then against the repository root, so demos
and tests work from anywhere in a checkout.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_config_path(path: str) -> str:
    for candidate in (os.path.abspath(path), os.path.join(REPO_ROOT, path)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Config file {path!r} not found in {os.getcwd()} nor in {REPO_ROOT}; "
        "pass e.g. 'configs/vit.py' or 'configs/vit.py:smoke'."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'<file>.py[:<arg>]' -> the ConfigDict of the file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    path = resolve_config_path(path)
    # Config files import their shared base as `configs.common`: make its parent importable.
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location("_cer_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
