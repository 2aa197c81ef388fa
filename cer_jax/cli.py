"""Shared entry point of the command-line tools: input errors as one line, not a traceback.

`cli.run(main)` runs an absl `main`; a `UserError` (or another error listed by the tool) is
printed as `error: <message>` on stderr with exit status 2 (or the error's `exit_status`), and
Ctrl-C as one line with exit status 130 (what the tools write is renamed into place, so a stop
leaves no half file); a tool that stopped on SIGTERM raises `errors.Terminated` (exit status
143). `--traceback` shows the full traceback instead, for bug reports. SIGTERM itself keeps its
default action here (death at once): a Python handler would wait while the main thread is in
compiled code (an XLA compile or step, a collective), so `timeout` or a second SIGTERM could no
longer stop a stuck tool.
`initialize_distributed()` starts JAX's multi-process runtime (one process per host of a TPU
slice, or per GPU / node of a SLURM job) when the flags or the environment ask for it; it must
run before any other JAX call. On CPU, `run` first restarts the process once with huge pages
for malloc where that helps (`huge_pages`).
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cer_jax import config_loading, huge_pages
from cer_jax.errors import Terminated, UserError, disk_full

FLAGS = flags.FLAGS
# The flags defined through this module's helpers belong to the tool that calls them (its
# --help lists them), not to this module.
flags.disclaim_key_flags()


class _PathParser(flags.ArgumentParser):
    """A path flag: a leading ~ is the home folder, as the shell would make it in a word of its
    own (it leaves `--flag=~/x` alone). A gs:// or relative path is unchanged."""

    syntactic_help = "a path; ~ is the home folder"

    def parse(self, argument):
        if isinstance(argument, str) and not argument.strip():
            # `--workdir=$UNSET` trained into the working directory; elsewhere "" read as unset.
            raise ValueError("the path is empty; give a file or folder name (is a shell "
                             "variable in it unset?)")
        return os.path.expanduser(argument) if isinstance(argument, str) else argument

    def flag_type(self) -> str:
        return "string"


class _PathListParser(flags.ListParser):
    """A comma-separated list of paths, each as _PathParser reads it."""

    def parse(self, argument):
        return [os.path.expanduser(p) for p in super().parse(argument)]


def define_path_flag(name: str, default: str | None, help_text: str, **kwargs):
    return flags.DEFINE(_PathParser(), name, default, help_text,
                        serializer=flags.ArgumentSerializer(), **kwargs)


def define_path_list_flag(name: str, default: list[str] | None, help_text: str, **kwargs):
    return flags.DEFINE(_PathListParser(), name, default, help_text,
                        serializer=flags.CsvListSerializer(","), **kwargs)


def define_distributed_flags() -> None:
    """The multi-process flags, for the tools that run on every host (train, fuse). Defined by
    the tool's module, not here, so importing this module defines no flag."""
    flags.DEFINE_enum(
        "distributed", "auto", ["auto", "on", "off"],
        "Start JAX's multi-process runtime (jax.distributed.initialize, one process per host or "
        "GPU). auto: when the environment is a TPU VM, a SLURM job step with several tasks or "
        "sets JAX_COORDINATOR_ADDRESS, or a coordinator flag below is given.",
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
    flags.DEFINE_integer("num_processes", None, "Number of processes.")
    flags.DEFINE_integer("process_id", None, "This process's index.")


def multi_process_environment(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is one of several that JAX can find each other in by itself."""
    slurm_tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    on_tpu_vm = any(os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0"))
    return (
        "JAX_COORDINATOR_ADDRESS" in environ
        or ("SLURM_STEP_ID" in environ and int(slurm_tasks) > 1)
        or (on_tpu_vm and importlib.util.find_spec("libtpu") is not None)
    )


def initialize_distributed() -> None:
    """jax.distributed.initialize, as --distributed and the environment say (before any other
    JAX call). On Cloud TPU and SLURM JAX finds the coordinator itself.

    JAX's preemption service is turned off first: it installs a C-level SIGTERM handler that
    only records the signal (for `multihost_utils.reached_preemption_sync_point`, which nothing
    here calls), so a SIGTERM outside the training loop (loading data, compiling, fusing) did
    nothing until the SIGKILL that follows. The trainer's own handler and agreement
    (`trainer.StopRequest`) stop the loop; elsewhere SIGTERM keeps its default action."""
    import jax

    names = ("coordinator_address", "num_processes", "process_id")
    given = {name: FLAGS[name].value for name in names if FLAGS[name].value is not None}
    mode = FLAGS.distributed
    if mode == "on" or (mode == "auto" and (given or multi_process_environment())):
        jax.config.update("jax_enable_preemption_service", False)
        try:
            jax.distributed.initialize(**given)
        except ValueError as e:  # JAX's checks of the three values, before it connects
            flags_given = " ".join(f"--{name}={value}" for name, value in given.items())
            raise UserError(
                f"{flags_given or f'--distributed={mode}'}: {e} Where JAX cannot find the other "
                "processes itself (a Cloud TPU VM, a SLURM step of several tasks, "
                "JAX_COORDINATOR_ADDRESS), give every process --coordinator_address=HOST:PORT "
                "of process 0 and --num_processes=N, and each its own --process_id (0 to "
                "N-1).") from e


def _not_orbax_chatter(record: std_logging.LogRecord) -> bool:
    is_orbax = f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return record.levelno >= std_logging.ERROR or not is_orbax


def quiet_orbax() -> None:
    """Keeps Orbax's per-checkpoint INFO and WARNING lines (notes on its own defaults) out of
    the console; its errors still show."""
    logging.get_absl_handler().addFilter(_not_orbax_chatter)


def quiet_native_logs() -> None:
    """TensorFlow's and XLA's C++ start-up INFO lines hide what matters (warnings still show)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


UsageError = app.UsageError
_HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort", "-helpshort", "--helpfull",
               "-helpfull", "--helpxml", "-helpxml")


def define_traceback_flag() -> None:
    """--traceback, listed by the --help of the module that calls this first (cli.run does)."""
    if "traceback" not in FLAGS:
        flags.DEFINE_bool(
            "traceback", False, "On an input error, show the full Python traceback, not one line."
        )


def parse_flags_with_help(argv: list[str]) -> list[str]:
    """absl's flag parsing, but --help (and --helpfull, ...) exits 0 after printing the help,
    as other command-line tools do; absl's own exits 1. A flag error keeps absl's status 1."""
    try:
        return _parse_flags_with_usage(argv)
    except SystemExit as e:
        asked = any(arg in _HELP_FLAGS for arg in argv[1:argv.index("--") if "--" in argv
                                                         else len(argv)])
        # absl exits from inside a help flag's parsing; a flag error exits from its handler.
        if e.code == 1 and asked and not isinstance(e.__context__, flags.Error):
            sys.exit(0)
        raise


def _parse_flags_with_usage(argv: list[str]) -> list[str]:
    """absl's app.parse_flags_with_usage, except that a `--config.KEY=VALUE` of the wrong type
    is one line naming the type KEY takes (exit status 2), as a misspelt KEY is: absl's own
    report of it was Python's conversion error ("invalid literal for int() with base 10")."""
    try:
        return FLAGS(argv)
    except flags.IllegalFlagValueError as error:
        message = _config_value_error(error) or _path_value_error(error)
        if message:
            _exit_with(message)
        _report_flag_error(error)
    except flags.Error as error:
        message = _override_without_config(error, argv)
        if message:
            _exit_with(message)
        _report_flag_error(error)


def _override_without_config(error: flags.Error, argv: Sequence[str]) -> str | None:
    """The line for a `--config.KEY=VALUE` override given with no --config before it: absl
    named it an unknown flag ('config.KEY'), or said a value for --config was missing."""
    if "config" not in FLAGS:
        return None
    match = (re.match(r"Unknown command line flag '(config\.[^']+)'", str(error))
             or re.match(r"Found --(config\.\S+?)(?:=\S*)? in argv before a value for --config",
                         str(error)))
    if not match:
        return None
    override = next((arg for arg in argv if arg.split("=", 1)[0] == f"--{match.group(1)}"),
                    f"--{match.group(1)}")
    return (f"{override} overrides a key of a config file: give the file first, "
            "--config=FILE (e.g. configs/vit.py), then its overrides.")


def _report_flag_error(error: flags.Error) -> NoReturn:
    """A flag error as absl's app.parse_flags_with_usage reports it (status 1)."""
    message = str(error)
    if "\n" in message:
        message = "\n" + textwrap.indent(message, "  ")
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def _path_value_error(error: flags.IllegalFlagValueError) -> str | None:
    """The line for a path flag's value that _PathParser refuses (an empty one), else None."""
    match = re.match(r"flag --([^=\s]+)=", str(error))
    if not match or match.group(1) not in FLAGS:
        return None
    if not isinstance(FLAGS[match.group(1)].parser, _PathParser) or error.__context__ is None:
        return None
    return f"{str(error).split(': ', 1)[0].removeprefix('flag ')}: {error.__context__}."


# What a config key of each absl parser's type takes, as the line for a wrong value says it.
_CONFIG_VALUE_TYPES = {"float": "a number", "int": "a whole number", "bool": "True or False"}


def _config_value_error(error: flags.IllegalFlagValueError) -> str | None:
    """The line for a `--config.KEY=VALUE` whose VALUE is not of KEY's type, or None for
    another flag's error. absl's message is `flag --NAME=VALUE: <the parser's error>`."""
    match = re.match(r"flag --(config\.[^=\s]+)=", str(error))
    if not match or match.group(1) not in FLAGS:
        return None
    flag = FLAGS[match.group(1)]
    cause = error.__context__
    value = str(error)[match.end():]
    if cause is not None and value.endswith(f": {cause}"):
        value = value[:-len(f": {cause}")]
    key = match.group(1).removeprefix("config.")
    section = _section_override_error(key, value)
    if section:  # was absl's 'Failed to parse ... as a ConfigDict', status 1
        return section
    takes = _CONFIG_VALUE_TYPES.get(flag.parser.flag_type())
    if takes is None:
        return None
    example = "" if flag.default is None else f" (the config has {flag.default!r})"
    return f"--config.{key}={value}: {key} takes {takes}{example}, not {value!r}."


def _section(config: object, key: str) -> ml_collections.ConfigDict | None:
    """The section (a ConfigDict) that the dotted `key` names in `config`, else None."""
    try:
        for part in key.split("."):
            config = config[part]
    except (KeyError, TypeError, AttributeError):
        return None
    return config if isinstance(config, ml_collections.ConfigDict) else None


def _file_section(key: str) -> ml_collections.ConfigDict | None:
    """The section `key` of the --config file's own config (before any override: a dict
    literal replaces a section in the parsed one), else None."""
    try:
        config = config_loading.load_config(config_flags.get_config_filename(FLAGS["config"]))
    except UserError:
        return None
    return _section(config, key)


def _section_override_error(key: str, value: str) -> str | None:
    """The line for `--config.KEY=VALUE` where KEY names a section of the config, else None:
    a value other than a dict literal was absl's two-line 'Failed to parse ... as a
    ConfigDict' (status 1)."""
    section = _file_section(key)
    return None if section is None else config_loading.section_override_line(key, value, section)


def _refuse_partial_sections(argv: Sequence[str]) -> None:
    """One line for a `--config.SECTION={...}` override whose dict literal leaves out keys of
    the section: ml_collections replaces a section whole, so a key left out was a KeyError /
    AttributeError traceback where the code reads it."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        name, sep, value = arg.partition("=")
        key = name.removeprefix("--config.")
        parsed = None if key == name else _section(FLAGS["config"].value, key)
        original = None if parsed is None else _file_section(key)
        if original is not None and not set(original) <= set(parsed):
            _exit_with(config_loading.section_override_line(
                key, value if sep else argv[i + 1], original))


def run(main: Callable[[Sequence[str]], None],
        user_errors: tuple[type[BaseException], ...] = (),
        resolve_argv: Callable[[list[str]], list[str]] | None = None) -> None:
    """app.run(main) with input errors as one line; `resolve_argv` may rewrite sys.argv first
    (its own input errors are reported the same way). A CPU run first restarts itself once with
    huge pages for malloc where that helps (`huge_pages`)."""
    huge_pages.restart_if_useful()
    quiet_native_logs()
    define_traceback_flag()
    sys.unraisablehook = _ctrl_c_not_lost(sys.unraisablehook)
    errors = (UserError, *user_errors)
    argv = list(sys.argv)
    if resolve_argv is not None:
        try:
            argv = resolve_argv(argv)
        except errors as e:
            if _asks_for_traceback(argv):  # flags are not parsed yet: read the word itself
                raise
            _exit_with(e)

    def guarded(args: Sequence[str]) -> None:
        try:
            main(args)
        except UsageError as e:  # absl's: the whole --help page above the line, status 1
            if FLAGS.traceback:
                raise
            hint = (" (a value with spaces needs quotes)" if str(e).startswith("Unexpected")
                    else "")
            _exit_with(f"{str(e).rstrip('.')}{hint}; --help lists the flags.")
        except errors as e:
            if FLAGS.traceback:
                raise
            _exit_with(e, status=getattr(e, "exit_status", 2))
        except KeyboardInterrupt as e:  # the message of a tool's own, e.g. trainer.Interrupted
            if FLAGS.traceback:
                raise
            by = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
            _exit_with(str(e) or f"stopped by {by}.", status=getattr(e, "exit_status", 130))
        except Exception as e:  # a full disk: a page of the writing library's tracebacks
            full = disk_full(e)
            if full is None or FLAGS.traceback:
                raise
            _exit_with(f"{full}; free space there, or use a larger disk, and run the same "
                       "command again (cer_jax.train resumes from its last saved step).")

    app.run(guarded, argv=argv, flags_parser=_parse_flags)


def _asks_for_traceback(argv: Sequence[str]) -> bool:
    """Whether argv holds --traceback (or --traceback=true), as absl would read it."""
    words = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    return any(word.lstrip("-") in ("traceback", "traceback=true", "traceback=True",
                                    "traceback=1") and word.startswith("-") for word in words)


def _ctrl_c_not_lost(previous: Callable) -> Callable:
    """An unraisablehook that sends a Ctrl-C swallowed by a callback again. A Ctrl-C whose
    KeyboardInterrupt was raised inside a garbage-collector callback (JAX has one; the first
    seconds of every tool) was "Exception ignored in: _xla_gc_callback" and the tool went on,
    e.g. trained the whole run. The signal comes again a moment later from another thread, to
    land outside the callback (and again, should it not)."""

    def hook(unraisable) -> None:
        if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
            previous(unraisable)
            return
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()

    return hook


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a misspelt `--config.KEY=...` override as one line: for it
    ml_collections raises an AttributeError / KeyError, which absl lets through. A
    `--config.KEY=None` override (which ml_collections cannot parse) is applied afterwards."""
    none_keys: list[str] = []
    if "config" in FLAGS:
        argv, none_keys = config_loading.split_none_overrides(argv)
        # ml_collections finds the override flags to define in sys.argv itself.
        sys.argv = [sys.argv[0], *argv[1:]] if none_keys else sys.argv
    try:
        rest = parse_flags_with_help(argv)
    except (AttributeError, KeyError, ValueError) as e:
        if not isinstance(e, ValueError):
            _exit_if_misspelt_key(e, argv)
        _exit_if_key_path_breaks(argv)
        raise
    if "config" in FLAGS:
        _refuse_partial_sections(argv)
    if none_keys:
        try:
            config_loading.apply_none_overrides(FLAGS.config, none_keys)
        except UserError as e:
            _exit_with(e)
    return rest


def define_config_file(name: str, default: str | None, help_text: str, **kwargs):
    """config_flags.DEFINE_config_file. With a default file, ml_collections loads it and applies
    the command line's overrides while defining the flag, at import: a misspelt
    `--config.KEY=...` was a traceback there, before `run`; it is the same one line here."""
    try:
        return config_flags.DEFINE_config_file(name, default, help_text, **kwargs)
    except (AttributeError, KeyError, ValueError) as e:
        if not isinstance(e, ValueError):
            _exit_if_misspelt_key(e, sys.argv, default)
        _exit_if_key_path_breaks(sys.argv, default)
        raise


def _exit_if_misspelt_key(error: BaseException, argv: Sequence[str],
                          default_config: str | None = None) -> None:
    """One line for ml_collections' error for a `--config.KEY` override naming a key the config
    lacks; returns for any other error (a bug: its traceback shows) and under --traceback.
    Without a close key to suggest, the line lists the keys of KEY's section, read from the
    --config file (or `default_config`)."""
    missing, hint = _missing_key(error)
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.")
                 and missing in arg.split("=", 1)[0].removeprefix("--config.").split(".")]
    if not overrides or "--traceback" in argv:
        return
    if not hint:
        parts = overrides[0].split("=", 1)[0].removeprefix("--config.").split(".")
        hint = _section_keys(argv, parts[:parts.index(missing)], default_config)
    _exit_with(f"{overrides[0]}: the config has no key {missing!r}. {hint}".rstrip())


def _exit_if_key_path_breaks(argv: Sequence[str], default_config: str | None = None) -> None:
    """One line for a `--config.KEY=...` whose KEY has an empty part (`--config.optimizer.=1`,
    a shell variable left unset) or goes on below a single value (`--config.optimizer.lr.x=1`):
    ml_collections' ValueError / KeyError traceback. Returns for any other error."""
    if "--traceback" in argv:
        return
    config = _config_of(argv, default_config)
    words = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    for word in words:
        name = word.split("=", 1)[0]
        if not name.startswith("--config."):
            continue
        key = name.removeprefix("--config.")
        parts = key.split(".")
        if not all(parts):
            _exit_with(f"{word}: the key {key!r} has an empty part; name each part, e.g. "
                       "--config.SECTION.KEY=VALUE (a shell variable left unset?).")
        node = config
        for depth, part in enumerate(parts):
            if node is None or part not in node:
                break  # a missing key: _exit_if_misspelt_key's line
            node = node[part]
            below = ".".join(parts[:depth + 1])
            if depth + 1 < len(parts) and not isinstance(node, ml_collections.ConfigDict):
                _exit_with(f"{word}: {below} is one value ({node!r} in the config), not a "
                           f"section with keys; set it with --config.{below}=VALUE.")


def _config_of(argv: Sequence[str], default_config: str | None) -> ml_collections.ConfigDict | None:
    """The config of the file argv's --config names (or `default_config`), None where it
    cannot be read."""
    spec = default_config
    for i, arg in enumerate(argv):
        name, sep, value = arg.partition("=")
        if name in ("--config", "-config"):
            spec = value if sep else (argv[i + 1] if i + 1 < len(argv) else None)
    try:
        return config_loading.load_config(spec)
    except Exception:  # noqa: BLE001 - only for a better line: the error stands without it
        return None


def _section_keys(argv: Sequence[str], section: list[str], default_config: str | None) -> str:
    """'Its keys under model: depth, dtype, name, width.' for the config file that argv's
    --config names, or "" where it cannot be read."""
    node = _config_of(argv, default_config)
    try:
        for part in section:
            node = node[part]
        keys = list(node.keys())
    except Exception:  # noqa: BLE001 - only a hint: the line stands without it
        return ""
    return config_loading.section_keys_hint(keys, section)


def _missing_key(error: BaseException) -> tuple[str, str]:
    """(key, "Did you mean ...?" or "") from ml_collections' error for a key it lacks."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]  # AttributeError(KeyError(message))
    first, _, hint = str(error.args[0] if error.args else "").partition("\n")
    return first.strip("'\""), hint.strip()


def _exit_with(error: BaseException | str, status: int = 2) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(status)
