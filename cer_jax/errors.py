"""The base class of errors in what a user gave (a config value, a file, a workdir).

Command-line tools print such an error as one line and exit non-zero (`cer_jax.cli`); every
other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input; the message names the file, line or config key and the fix."""
