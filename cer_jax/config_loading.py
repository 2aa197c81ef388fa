"""Find and load config files: `load_config("configs/vit.py:smoke")`.

A path is read as given (relative to the working directory); a `configs/<file>` path that is not
there falls back to the copy installed with the package (`cer_jax.configs`), so the documented
commands work from any directory and from an installed wheel. A remote file (gs://...) is read
through etils epath into a local copy, which Python can import.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import re
import tempfile

import ml_collections
from etils import epath

from cer_jax.errors import UserError

PACKAGED_PREFIX = "configs/"


class ConfigFileError(UserError):
    """A --config file that does not exist."""


def split_spec(spec: str) -> tuple[str, str]:
    """'gs://b/vit.py:smoke' -> ('gs://b/vit.py', 'smoke'): the argument follows the file."""
    match = re.fullmatch(r"(.*?\.py)(?::(.*))?", spec)
    return (match.group(1), match.group(2) or "") if match else (spec, "")


def _local_copy(path: str) -> str:
    """A remote config file's text in a local file named by its content (Python imports it)."""
    remote = epath.Path(path)
    if not remote.is_file():
        raise ConfigFileError(f"Config file {path!r} not found; check the path and your access.")
    text = remote.read_bytes()
    folder = os.path.join(tempfile.gettempdir(), "cer_jax_configs")
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder, f"{hashlib.sha256(text).hexdigest()[:16]}-{remote.name}")
    if not os.path.exists(local):  # written whole, then renamed: hosts may race here
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as f:
            f.write(text)
        os.replace(f.name, local)
    return local


def resolve_config_path(path: str) -> str:
    if "://" in path:
        return _local_copy(path)
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
    path, arg = split_spec(spec)
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
            path, rest = split_spec(arg.removeprefix("--config="))
            arg = f"--config={resolve_config_path(path)}{':' + rest if rest else ''}"
        resolved.append(arg)
    return resolved
