"""Path facts the tools check before any work, so that a path a user gave fails in one line and
not after minutes; and one spelling per folder, so two spellings of it compare equal.

Remote paths (gs://...) pass the checks: object stores have no folders, hence no file that could
stand in a folder's way. Paths are read through etils epath, as every workdir path is.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Iterator

from etils import epath


def io_errors() -> tuple[type[BaseException], ...]:
    """What a failed read or write raises: OSError, and for gs:// (TensorFlow's file system,
    when TensorFlow is loaded) its OpError."""
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    return (OSError,) + ((errors.OpError,) if errors is not None else ())


def error_reason(error: BaseException) -> str:
    """The short reason of a failed file operation, for a one-line message: the OS's words
    ("Permission denied"), else the first line of the error, else its type's name."""
    text = str(error).strip()
    return (getattr(error, "strerror", None) or (text.splitlines()[0] if text else "")
            or error.__class__.__name__)


def cannot_read(what: str, path: str | os.PathLike[str], error: BaseException) -> str:
    """'WHAT cannot be read (reason): check the path' (WHAT names the flag or key and `path`),
    with the likely fix of a gs:// path that raised (no credentials, no network): this
    machine's access to its bucket. Callers add the alternative, if any."""
    access = (", and this machine's access to its bucket (gcloud auth application-default "
              "login)" if is_remote(path) else "")
    return f"{what} cannot be read ({error_reason(error)}): check the path{access}"


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


def write_text_atomically(target: epath.Path, text: str) -> None:
    """Writes `text` beside `target` and renames it into place (local or gs://): the file is
    whole at any time, the earlier one or this; a write cut short (a Ctrl-C included) leaves
    the earlier file and no scratch file."""
    staged = target.parent / f".{target.name}.tmp"
    try:
        staged.write_text(text)
        staged.replace(target)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def copy_file_atomically(source: str, target: epath.Path) -> None:
    """Copies the local file `source` to a scratch object beside `target` and renames it into
    place (gs://: writing `target` itself would leave, on a Ctrl-C or an error midway, a cut
    file over the earlier one, as a closed writer uploads what it has). A copy cut short
    removes the scratch object and leaves the earlier `target`."""
    scratch = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(source, "rb") as reader, scratch.open("wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)  # streamed: videos are big
        scratch.replace(target)
    except BaseException:
        with contextlib.suppress(*io_errors()):  # the first error is the one to tell
            scratch.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replacing_folder(target: epath.Path, *, manifest: str) -> Iterator[epath.Path]:
    """A new, empty folder beside `target` to write into, `manifest` (a file name) included.
    Leaving the block, it replaces `target` whole (`replace_folder`); a write that fails or is
    stopped (Ctrl-C) removes it instead, leaving `target` as it was and nothing aside. Each call
    writes a folder of its own, so two writers of one target (a trainer's export and a fusion's
    re-export) never empty each other's half-written folder."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        tmp.rmtree(missing_ok=True)
        raise
    replace_folder(tmp, target, manifest=manifest)


def replace_folder(finished: epath.Path, target: epath.Path, *,
                   manifest: str | None = None) -> None:
    """Moves the whole folder `finished` to `target`, removing the folder that was there.

    `manifest` names the file by which readers take a folder for whole: it leaves `target`
    first and comes into place last, so a folder that has it is whole. On gs:// a folder moves
    object by object: a reader meanwhile, or a move cut short (SIGKILL), found the new manifest
    (first in name order) beside some of the files it lists; now it finds none and refuses the
    folder. A Ctrl-C or SIGTERM that arrives meanwhile is delivered once the move is done:
    between the two renames it would leave no folder at `target` (the previous one set aside,
    hidden)."""
    with _stop_signals_held():
        text = None
        if manifest is not None:
            text = (finished / manifest).read_text()
            (finished / manifest).unlink()
        old = None
        if target.exists():
            if manifest is not None:
                (target / manifest).unlink(missing_ok=True)
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
        finished.rename(target)
        if text is not None:
            write_text_atomically(target / manifest, text)
        if old is not None:
            old.rmtree()


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGINT / SIGTERM that arrive inside are recorded and raised again on leaving, to the
    handlers that were there. Python runs signal handlers in the main thread only, so held
    there; a signal that Python does not handle, or that is ignored, is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None and handler != signal.SIG_IGN:
            previous[signum] = signal.signal(signum, lambda number, _: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(arrived):
            signal.raise_signal(signum)
