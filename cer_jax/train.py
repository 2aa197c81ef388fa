r"""Train one model: `python -m cer_jax.train --config=configs/vit.py:smoke --workdir=/tmp/vit`.

Flags:
  --config    a config file, optionally with an argument after a colon (configs/vit.py:smoke);
              any field can be overridden, e.g. --config.optimizer.lr=1e-4 (None where a key
              allows it; a comma list for a tuple: --config.export.splits=train_fit,test). A
              `configs/...` path that is not in the working directory is read from the
              installed package; a gs://... file is read through etils epath.
  --workdir   where checkpoints, TensorBoard events, config.json and the export go (local or
              gs://...); running again on the same workdir resumes.
  --distributed, --coordinator_address, --num_processes, --process_id
              several processes (one per host of a TPU slice or GPU cluster): see cer_jax.cli.
  --traceback show the full traceback on an input error (default: one line).

Exit status: 0 trained and exported (or halted by training.halt_after_steps), 2 an input error,
130 stopped by Ctrl-C, 143 stopped by SIGTERM (preemption, a time limit); the same command
resumes a stopped run from its last checkpoint.
"""

from __future__ import annotations

from absl import flags, logging

from cer_jax import cli
from cer_jax.config_loading import resolve_config_flag
from cer_jax.errors import Terminated

_CONFIG = cli.define_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = cli.define_path_flag("workdir", None, "Directory for checkpoints, logs and export.")
cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_orbax()
    cli.initialize_distributed()
    import jax

    from cer_jax import trainer

    logging.info("JAX devices (process %d of %d): %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    result = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("Final metrics: %s", {k: v for k, v in result.items() if k != "eval"})
    if result["stopped"] == "preempted":  # a halt (training.halt_after_steps) was asked for: 0
        raise Terminated(f"stopped by SIGTERM at step {result['step']}, saved in "
                         f"{_WORKDIR.value}: run the same command again to resume.")


if __name__ == "__main__":
    cli.run(main, resolve_argv=resolve_config_flag)
