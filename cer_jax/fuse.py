r"""Late fusion of trained members, reported on validation and test.

  python -m cer_jax.fuse --workdirs=runs/vit,runs/manet,runs/resnet --out=runs/fusion
  python -m cer_jax.fuse --config=configs/fusion.py --config.workdirs=A,B,C --config.out=DIR

`--config` (default configs/fusion.py) holds every option; `--workdirs`, `--out` and
`--select_on` are shorthands that override its keys of the same name when given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from cer_jax import fusion
from cer_jax.fusion import report as report_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", fusion.DEFAULT_CONFIG, "Fusion config file.", lock_config=False
)
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Member workdirs (overrides config.workdirs).")
_OUT = flags.DEFINE_string("out", None, "Report directory (overrides config.out).")
_SELECT_ON = flags.DEFINE_enum(
    "select_on", None, ["validation", "test"],
    "Split where weights / hyper-parameters are chosen (overrides config.select_on).",
)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    fusion.quiet_checkpoint_logs()
    config = fusion.resolve_config(_CONFIG.value, _WORKDIRS.value, _OUT.value, _SELECT_ON.value)
    report = fusion.fuse(config)
    print(report_lib.summary_table(report))
    print(f"\nReport written to {os.path.abspath(config.out)} (report.md, report.json, PNGs, "
          "TensorBoard events).")


if __name__ == "__main__":
    app.run(main)
