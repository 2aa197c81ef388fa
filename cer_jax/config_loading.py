"""Find and load config files: `load_config("configs/vit.py:smoke")`.

A path is read as given (relative to the working directory); a `configs/<file>` path that is not
there falls back to the copy installed with the package (`cer_jax.configs`), so the documented
commands work from any directory and from an installed wheel.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os

import ml_collections

from cer_jax.errors import UserError

PACKAGED_PREFIX = "configs/"


class ConfigFileError(UserError):
    """A --config file that does not exist."""


def resolve_config_path(path: str) -> str:
    if os.path.isfile(path):
        return os.path.abspath(path)
    if path.startswith(PACKAGED_PREFIX):
        packaged = importlib.resources.files("cer_jax.configs") / path.removeprefix(PACKAGED_PREFIX)
        if packaged.is_file():
            return os.fspath(packaged)
    raise ConfigFileError(
        f"Config file {path!r} not found in {os.getcwd()} nor among the installed configs; "
        "pass e.g. 'configs/vit.py' or 'configs/vit.py:smoke'."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'<file>.py[:<arg>]' -> the ConfigDict of the file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    file = resolve_config_path(path)
    module_spec = importlib.util.spec_from_file_location("_cer_jax_config", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def resolve_config_flag(argv: list[str]) -> list[str]:
    """Rewrites `--config=configs/x.py[:arg]` in argv to the file load_config would read."""
    resolved = []
    for arg in argv:
        if arg.startswith("--config="):
            path, colon, rest = arg.removeprefix("--config=").partition(":")
            arg = f"--config={resolve_config_path(path)}{colon}{rest}"
        resolved.append(arg)
    return resolved
