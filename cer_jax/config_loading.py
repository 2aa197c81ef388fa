"""Find and load config files: `load_config("configs/vit.py:smoke")`.

A path is read as given (relative to the working directory, `~` the home folder); a
`configs/<file>` path that is not there falls back to the copy installed with the package
(`cer_jax.configs`), so the documented commands work from any directory and from an installed
wheel. A remote file (gs://...) is read through etils epath into a local copy, which Python can
import. A file that cannot be run as a config (a syntax error, no get_config(), an argument its
get_config() does not take, a result that is no ConfigDict) is one line naming the file.

Command-line overrides (`--config.KEY=VALUE`, parsed by ml_collections) also take `None` for a
key that allows it (`--config.optimizer.grad_clip_norm=None`: no clipping), and a tuple key
takes a plain comma list (`--config.export.splits=train_fit,test`), as well as the Python
literal `'("a", "b")'`.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.resources
import importlib.util
import inspect
import os
import pathlib
import re
import tempfile
import traceback
from collections.abc import Iterable, Sequence

import ml_collections
from etils import epath
from ml_collections.config_flags import config_flags, tuple_parser

from cer_jax import paths
from cer_jax.errors import UserError

PACKAGED_PREFIX = "configs/"


class ConfigFileError(UserError):
    """A --config file that does not exist."""


def split_spec(spec: str) -> tuple[str, str]:
    """'gs://b/vit.py:smoke' -> ('gs://b/vit.py', 'smoke'): the argument follows the file."""
    match = re.fullmatch(r"(.*?\.py)(?::(.*))?", spec)
    return (match.group(1), match.group(2) or "") if match else (spec, "")


def _local_copy(path: str) -> str:
    """A remote config file's text in a local file (Python imports it)."""
    remote = epath.Path(path)
    try:
        if not remote.is_file():
            raise ConfigFileError(
                f"Config file {path!r} not found; check the path and your access.")
        text = remote.read_bytes()
    except paths.io_errors() as e:  # no network, no credentials: was the backend's traceback
        raise ConfigFileError(f"{paths.cannot_read(f'Config file {path!r}', path, e)}.") from e
    return _copy(text, remote.name)


def _copy(text: bytes, name: str) -> str:
    """`text` in a local file named by its content and `name` without colons: ml_collections
    reads `--config=FILE:ARG` up to the first colon, so a colon in the path cut it there."""
    folder = os.path.join(tempfile.gettempdir(), "cer_jax_configs")
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder,
                         f"{hashlib.sha256(text).hexdigest()[:16]}-{name.replace(':', '_')}")
    if not os.path.exists(local):  # written whole, then renamed: hosts may race here
        with tempfile.NamedTemporaryFile(dir=folder, delete=False) as f:
            f.write(text)
        os.replace(f.name, local)
    return local


def _packaged_configs():
    """The installed configs (cer_jax.configs); in a source checkout put on PYTHONPATH rather
    than installed, the checkout's configs/ folder beside the package."""
    try:
        return importlib.resources.files("cer_jax.configs")
    except ModuleNotFoundError:
        return pathlib.Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(path: str) -> str:
    if "://" in path:
        return _local_copy(path)
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        return os.path.abspath(path)
    if path.startswith(PACKAGED_PREFIX):
        packaged = _packaged_configs() / path.removeprefix(PACKAGED_PREFIX)
        if packaged.is_file():
            return os.fspath(packaged)
    installed = sorted(PACKAGED_PREFIX + entry.name for entry in _packaged_configs().iterdir()
                       if entry.name.endswith(".py") and not entry.name.startswith("_"))
    # `vit.py` alone, `configs/vit` or `configs/resnet.py` meant an installed one.
    stems = {os.path.splitext(name)[0].removeprefix(PACKAGED_PREFIX): name for name in installed}
    stem = os.path.splitext(os.path.basename(path))[0]
    close = [stems[s] for s in difflib.get_close_matches(stem, stems, n=1, cutoff=0.8)
             if os.path.dirname(path) in ("", PACKAGED_PREFIX.rstrip("/"))]
    raise ConfigFileError(
        f"Config file {path!r} not found in {os.getcwd()} nor among the installed configs "
        f"({', '.join(installed)}){f'; did you mean {close[0]!r}?' if close else '.'}"
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'<file>.py[:<arg>]' -> the ConfigDict of the file's get_config(arg)."""
    path, arg = split_spec(spec)
    return _load_file(resolve_config_path(path), arg, path)


def _load_file(file: str, arg: str, path: str) -> ml_collections.ConfigDict:
    """get_config(arg) of the local `file`; `path` is the file as the user named it."""
    module_spec = importlib.util.spec_from_file_location("_cer_jax_config", file)
    module = importlib.util.module_from_spec(module_spec)
    args = (arg,) if arg else ()
    try:
        module_spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise ConfigFileError(
                f"Config file {path!r} has no get_config(): a config file defines "
                "get_config() returning an ml_collections.ConfigDict (as configs/vit.py).")
        _check_signature(get_config, args, path)
        config = get_config(*args)
    except UserError:
        raise
    except SyntaxError as e:
        where = (f", line {e.lineno}" if e.filename == file else
                 f" (in {e.filename}, line {e.lineno}, which it imports)")
        raise ConfigFileError(f"Config file {path!r}{where}: {e.msg}; fix the file.") from e
    except Exception as e:  # the file's own code failed (an import, a name): its bug, not ours
        raise ConfigFileError(f"Config file {path!r}{_line_in(e, file)}: "
                              f"{type(e).__name__}: {_reason(e)}; fix the file (--traceback "
                              "shows where).") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(
            f"Config file {path!r}: get_config() returned {type(config).__name__}, not an "
            "ml_collections.ConfigDict (a forgotten return?).")
    return config


def _check_signature(get_config, args: tuple[str, ...], path: str) -> None:
    """One line for an argument after the colon that get_config() does not take, or for none
    where it needs one (was Python's TypeError from inside flag parsing)."""
    try:
        signature = inspect.signature(get_config)
    except ValueError:  # no signature to read (a builtin): let the call decide
        return
    try:
        signature.bind(*args)
    except TypeError:
        if args and not signature.parameters:
            raise ConfigFileError(
                f"Config file {path!r} takes no argument (its get_config() has no parameter), "
                f"not {args[0]!r}: use --config={path}.") from None
        given = f"the argument {args[0]!r}" if args else "no argument"
        raise ConfigFileError(
            f"Config file {path!r}: its get_config{signature} cannot be called with {given}; "
            f"give the argument it takes after a colon (--config={path}:ARG).") from None


def _reason(error: BaseException) -> str:
    """The error's words on one line; ml_collections' missing key is an AttributeError around
    a KeyError whose text ends with "Did you mean ...?" on a line of its own."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def _line_in(error: BaseException, file: str) -> str:
    """', line N' of the last line of `file` in the error's traceback, else ''."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(file)]
    return f", line {lines[-1]}" if lines else ""


def resolve_config_flag(argv: list[str]) -> list[str]:
    """Rewrites the `--config` flag in argv (`--config=X` or `--config X`) to the file
    load_config would read, after loading it once: a config file's own input errors (an unknown
    argument after the colon) are one line here, not a traceback from inside flag parsing."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        name, sep, value = arg.partition("=")
        if name not in ("--config", "-config"):
            continue
        if not sep:  # `--config FILE`: the value is the next word
            if i + 1 >= len(resolved):
                break
            i, value = i + 1, resolved[i + 1]
        path, rest = split_spec(value)
        file = resolve_config_path(path)
        if ":" in file:  # a folder such as runs:2: ml_collections would cut the path there
            file = _copy(pathlib.Path(file).read_bytes(), os.path.basename(file))
        _load_file(file, rest, path)
        value = f"{file}{':' + rest if rest else ''}"
        resolved[i] = f"{name}={value}" if sep else value
    return resolved


# --- command-line overrides -------------------------------------------------------------------


class ConfigOverrideError(UserError):
    """A `--config.KEY=None` override naming a key the config does not have."""


def _is_none(value: str) -> bool:
    return value.strip() in ("None", "none")


def split_none_overrides(argv: list[str], flag: str = "config") -> tuple[list[str], list[str]]:
    """(argv without its `--config.KEY=None` overrides, the KEYs whose last override is None).

    ml_collections parses `None` only for dataclass fields ('None' is no float, and a tuple
    key becomes `(None,)`), so these are applied after parsing by `apply_none_overrides`. As on
    the command line, the last override of a key wins."""
    prefix = f"--{flag}."
    words: list[tuple[list[str], str | None, bool]] = []  # (argv words, key, is None)
    i = 0
    while i < len(argv):
        name, sep, value = argv[i].partition("=")
        if name.startswith(prefix) and not sep and i + 1 < len(argv) and _is_none(argv[i + 1]):
            words.append(([argv[i], argv[i + 1]], name.removeprefix(prefix), True))  # KEY None
            i += 2
            continue
        key = name.removeprefix(prefix) if name.startswith(prefix) else None
        words.append(([argv[i]], key, bool(key and sep and _is_none(value))))
        i += 1
    last_is_none = {key: is_none for _, key, is_none in words if key}
    rest = [word for group, key, is_none in words if not (is_none or last_is_none.get(key))
            for word in group]
    return rest, [key for key, is_none in last_is_none.items() if is_none]


def section_keys_hint(keys: Iterable[str], section: Sequence[str]) -> str:
    """'Its keys under model: depth, dtype, name, width.': the fix for an override naming a key
    that `section` lacks and that has no close match (a None override's line and cli's)."""
    where = f" under {'.'.join(section)}" if section else ""
    return f"Its keys{where}: {', '.join(sorted(keys))}."


def section_override_line(key: str, value: str, section: ml_collections.ConfigDict,
                          flag: str = "config") -> str:
    """The line for `--config.KEY=VALUE` where KEY names a section (a ConfigDict) of the
    config: a section takes no single value."""
    return (f"--{flag}.{key}={value}: {key} is a section of the config, not one value; "
            f"override its keys one by one (--{flag}.{key}.KEY=VALUE). "
            f"{section_keys_hint(section.keys(), key.split('.'))}")


def apply_none_overrides(config: ml_collections.ConfigDict, keys: list[str],
                         flag: str = "config") -> None:
    """Sets each dotted KEY of `config` to None; a KEY the config lacks (or one that needs a
    value) is a one-line error, with the closest existing key as for a misspelt override."""
    for key in keys:
        node = config
        *parents, leaf = key.split(".")
        for depth, part in enumerate([*parents, leaf]):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                close = difflib.get_close_matches(part, known, n=1)
                hint = (f' Did you mean "{close[0]}" instead of "{part}"?' if close else
                        f" {section_keys_hint(known, parents[:depth])}" if known else "")
                raise ConfigOverrideError(
                    f"--{flag}.{key}=None: the config has no key {part!r}.{hint}")
            if part != leaf:
                node = node[part]
        # A key may be None when its config declares it so (a placeholder / FieldReference) or
        # holds None; ml_collections has no public way to ask the first.
        field = node._fields.get(leaf)
        if isinstance(field, ml_collections.ConfigDict):  # its YAML was the line's tail
            raise ConfigOverrideError(section_override_line(key, "None", field, flag))
        if field is not None and not isinstance(field, ml_collections.FieldReference):
            raise ConfigOverrideError(
                f"--{flag}.{key}=None: this key needs a value ({field!r} in the config).")
        node[leaf] = None


class _TupleParser(tuple_parser.TupleParser):
    """ml_collections' tuple parser, also for a plain comma list of words: `train_fit,test` is
    ('train_fit', 'test'), not the one string 'train_fit,test'; an empty one (`--config.KEY=`)
    is (), not ('',): a key's checks then name what the user meant (was: a split '' sought)."""

    def parse(self, argument):
        if isinstance(argument, str) and not argument.strip():
            return ()
        if isinstance(argument, str) and "," in argument and not re.search(r"[\[\]()'\"]",
                                                                              argument):
            return tuple(_literal_or_word(item.strip()) for item in argument.split(",")
                         if item.strip())
        return super().parse(argument)


def _literal_or_word(item: str):
    try:
        return ast.literal_eval(item)
    except (ValueError, SyntaxError):
        return item


config_flags.register_flag_parser_for_type(tuple, _TupleParser())
