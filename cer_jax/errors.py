"""The exceptions that command-line tools print as one line instead of a traceback.

`UserError` is bad input (exit status 2). `Terminated` is a run that SIGTERM stopped (exit
status 143). `cer_jax.cli` prints either as `error: <message>`, and a full disk (`disk_full`) as
one line too; every other exception is a bug and keeps its traceback.
"""

import errno
import os
import re
import signal


class UserError(ValueError):
    """Bad input; the message names the file, line or config key and the fix."""


class ConfigArgumentError(UserError):
    """An argument after a config file's colon (`configs/vit.py:smok`) that it does not know;
    `known` are the arguments it takes (none: only overrides change it)."""

    def __init__(self, file: str, arg: str, known: tuple[str, ...] = ()):
        names = [repr(name) for name in known]
        use = (f"use {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else
               f"it takes none (use --config={file} and --config.KEY=VALUE overrides)")
        super().__init__(f"Unknown config argument {arg!r} for {file}: {use}.")


class Terminated(KeyboardInterrupt):
    """A run that SIGTERM (a preemption, a time limit, `timeout`, `docker stop`, a new launch on
    the same TPU) stopped: cer_jax.train after saving its step, cer_jax.predict where it was (its
    own handler: the staged outputs are removed). One line, exit status 143 (128 + SIGTERM), not
    0, so that what a launcher runs next (the next member, the fusion) does not start."""

    exit_status = 128 + signal.SIGTERM


# How a full disk reads where no OSError carries its errno (Orbax's tensorstore, TensorFlow).
_DISK_FULL_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def disk_full(error: BaseException | None) -> str | None:
    """'a write failed, the disk is full (the OS's words, writing FILE)' when `error`, or one it
    was raised from or while handling, says so; else None. The caller adds the fix."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        words = file = None
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            words, file = os.strerror(error.errno), error.filename
        else:
            words = next((w for w in _DISK_FULL_WORDS if w in str(error)), None)
            quoted = re.search(r'"(/[^"]+)"', str(error))  # tensorstore quotes its file
            file = quoted and quoted.group(1)
        if words:
            writing = f", writing {file}" if file else ""
            return f"a write failed, the disk is full ({words}{writing})"
        error = error.__cause__ or error.__context__
    return None
