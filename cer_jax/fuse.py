r"""Late fusion of trained members, reported on validation and test.

  python -m cer_jax.fuse --workdirs=runs/vit,runs/manet,runs/resnet50 --out=runs/fusion
  python -m cer_jax.fuse --config=configs/fusion.py --config.workdirs=A,B,C --config.out=DIR

`--config` (default: the package's cer_jax.fusion.config, which configs/fusion.py re-exports)
holds every option; `--workdirs`, `--out` and `--select_on` are shorthands that override its
keys of the same name when given.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from cer_jax import cli
from cer_jax.config_loading import resolve_config_flag
from cer_jax.fusion import config as config_lib
from cer_jax.fusion import evaluator
from cer_jax.fusion import report as report_lib

# The default is the package's own file, so the command works from any directory or install.
_CONFIG = cli.define_config_file(
    "config", config_lib.__file__, "Fusion config file.", lock_config=False
)
_WORKDIRS = cli.define_path_list_flag("workdirs", None,
                                      "Member workdirs (overrides config.workdirs).")
_OUT = cli.define_path_flag("out", None, "Report directory (overrides config.out).")
_SELECT_ON = flags.DEFINE_enum(
    "select_on", None, ["validation", "test"],
    "Split where weights / hyper-parameters are chosen (overrides config.select_on).",
)

cli.define_distributed_flags()


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_orbax()
    cli.initialize_distributed()
    config = evaluator.resolve_config(_CONFIG.value, _WORKDIRS.value, _OUT.value, _SELECT_ON.value)
    report = evaluator.fuse(config)
    import jax

    if jax.process_index() == 0:  # every process holds the report; one prints it, as it writes
        print(report_lib.summary_table(report))
        print(f"\nReport written to {config.out} (report.md, report.json, PNGs, TensorBoard "
              "events).")


if __name__ == "__main__":
    cli.run(main, resolve_argv=resolve_config_flag)
