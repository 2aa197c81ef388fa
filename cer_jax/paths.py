"""Path facts the tools check before any work, so that a path a user gave fails in one line and
not after minutes; and one spelling per folder, so two spellings of it compare equal.

Remote paths (gs://...) pass the checks: object stores have no folders, hence no file that could
stand in a folder's way. Paths are read through etils epath, as every workdir path is.
"""

from __future__ import annotations

import os
import posixpath

from etils import epath


def is_remote(path: str | os.PathLike[str]) -> bool:
    return "://" in os.fspath(path)


def file_in_the_way(path: str | os.PathLike[str]) -> epath.Path | None:
    """The file that stands where the folder `path`, or one of the folders above it, is to be:
    making the folder would fail. None when there is none (or `path` is remote)."""
    if is_remote(path):
        return None
    ancestor = epath.Path(path).expanduser()
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    return ancestor if ancestor.exists() and not ancestor.is_dir() else None


def normalized(path: str | None) -> str | None:
    """`~` expanded, absolute, no trailing `/` (a remote path only loses its trailing `/`): the
    spelling a workdir's config.json records, valid from any working directory."""
    if not path:
        return path
    if is_remote(path):
        return path.rstrip("/")
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def same_place(path: str) -> str:
    """A key under which every spelling of one file or folder is equal, symbolic links
    included (etils' resolve() keeps them)."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.realpath(os.path.expanduser(path))
