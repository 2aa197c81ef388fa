r"""Train one model: `python -m cer_jax.train --config=configs/vit.py:smoke --workdir=/tmp/vit`.

Flags:
  --config    a config file, optionally with an argument after a colon (configs/vit.py:smoke);
              any field can be overridden, e.g. --config.optimizer.lr=1e-4
  --workdir   where checkpoints, TensorBoard events, config.json and the export go; running
              again on the same workdir resumes.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cer_jax.config_loading import REPO_ROOT, resolve_config_path

# Config files import their shared base as `configs.common`: make the repository importable.
sys.path.insert(0, REPO_ROOT)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and export.")
flags.mark_flags_as_required(["config", "workdir"])


def quiet_orbax(record: std_logging.LogRecord) -> bool:
    """Keeps Orbax's per-save INFO chatter out of the console (warnings still show)."""
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(quiet_orbax)
    import jax

    from cer_jax import trainer

    logging.info("JAX devices (process %d of %d): %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("Final metrics: %s", {k: v for k, v in result.items() if k != "eval"})


def resolve_config_flag(argv: list[str]) -> list[str]:
    """--config=configs/vit.py:smoke works from any directory (cwd first, then the repo root)."""
    resolved = []
    for arg in argv:
        if arg.startswith("--config="):
            path, colon, rest = arg.removeprefix("--config=").partition(":")
            arg = f"--config={resolve_config_path(path)}{colon}{rest}"
        resolved.append(arg)
    return resolved


if __name__ == "__main__":
    app.run(main, argv=resolve_config_flag(sys.argv))
