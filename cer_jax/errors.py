"""The exceptions that command-line tools print as one line instead of a traceback.

`UserError` is bad input (exit status 2); `StoppedBySigterm` is a run that SIGTERM stopped after
saving its work (exit status 143). `cer_jax.cli` prints either as `error: <message>`; every other
exception is a bug and keeps its traceback.
"""

import signal


class UserError(ValueError):
    """Bad input; the message names the file, line or config key and the fix."""


class StoppedBySigterm(Exception):
    """A run stopped by SIGTERM (a preemption, a time limit, a new launch on the same TPU) after
    saving its step. Its exit status is 143 (128 + SIGTERM, as cer_jax.predict's), not 0, so
    that what a launcher runs next (the next member, the fusion) does not start on it."""

    exit_status = 128 + signal.SIGTERM
