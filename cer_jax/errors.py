"""The exceptions that command-line tools print as one line instead of a traceback.

`UserError` is bad input (exit status 2). `Terminated` is SIGTERM, taken as Ctrl-C is (exit
status 143). `cer_jax.cli` prints either as `error: <message>`; every other exception is a bug
and keeps its traceback.
"""

import signal


class UserError(ValueError):
    """Bad input; the message names the file, line or config key and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: a preemption, a time limit, `timeout`, `docker stop`, a new launch on the same
    TPU. `cli.run` raises it where the main thread is, so the run unwinds as on Ctrl-C (staged
    outputs removed, earlier ones kept); a tool that stopped on it after saving its work raises
    it with its own message (cer_jax.train). Exit status 143 (128 + SIGTERM), not 0, so that what
    a launcher runs next (the next member, the fusion) does not start."""

    exit_status = 128 + signal.SIGTERM
