"""The exceptions that command-line tools print as one line instead of a traceback.

`UserError` is bad input (exit status 2). `Terminated` is a run that SIGTERM stopped (exit
status 143). `cer_jax.cli` prints either as `error: <message>`; every other exception is a bug
and keeps its traceback.
"""

import signal


class UserError(ValueError):
    """Bad input; the message names the file, line or config key and the fix."""


class Terminated(KeyboardInterrupt):
    """A run that SIGTERM (a preemption, a time limit, `timeout`, `docker stop`, a new launch on
    the same TPU) stopped: cer_jax.train after saving its step, cer_jax.predict where it was (its
    own handler: the staged outputs are removed). One line, exit status 143 (128 + SIGTERM), not
    0, so that what a launcher runs next (the next member, the fusion) does not start."""

    exit_status = 128 + signal.SIGTERM
