"""`python -m tfds_rafdb.rafdb --builder_config=compound --manual_dir=DIR --data_dir=D`.

Builds the same dataset as TFDS's own `tfds build tfds_rafdb/rafdb --config=compound ...`, for
environments where the `tfds` CLI does not start (TFDS 4.9.10's CLI imports apache_beam and
mlcroissant eagerly). The builder config is `--builder_config`, not `--config` as in `tfds build`,
because in every cer_jax command `--config` is a config file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags

from tfds_rafdb.layout import RafDbLayoutError

from .rafdb_dataset_builder import BUILDER_CONFIGS, build

_BUILDER_CONFIG = flags.DEFINE_enum(
    "builder_config",
    "compound",
    [c.name for c in BUILDER_CONFIGS],
    "Which rafdb builder config to prepare (rafdb/<builder_config>).",
)
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "RAF-DB's compound/ or basic/ folder, as released.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where TFDS writes the dataset.", required=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:  # absl's UsageError printed the whole --help page, status 1
        _exit_with(f"Unexpected arguments: {' '.join(argv[1:])} (a value with spaces needs "
                   "quotes); --help lists the flags.")
    for flag in (_MANUAL_DIR, _DATA_DIR):  # `--manual_dir=$UNSET` read the working directory
        if not flag.value.strip():
            _exit_with(f"--{flag.name}={flag.value}: the path is empty; give a folder (is a shell "
                       "variable in it unset?).")
    try:
        # The shell leaves `--data_dir=~/x` alone; gs:// paths pass through unchanged.
        builder = build(_BUILDER_CONFIG.value, os.path.expanduser(_MANUAL_DIR.value),
                        os.path.expanduser(_DATA_DIR.value))
    except RafDbLayoutError as e:  # a bad tree: the message names the file and line
        _exit_with(str(e))
    print(f"rafdb/{_BUILDER_CONFIG.value} ready in {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name:<10s} {split.num_examples:6d} examples")


def _exit_with(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, but --help exits 0 after the help (absl's exits 1); a flag error keeps
    status 1. (cer_jax.cli does the same for the cer_jax tools; this package never imports it.)
    `tfds build`'s `--config=NAME` was absl's "Unknown command line flag 'config'"."""
    for arg in argv[1:]:
        name, sep, value = arg.partition("=")
        if name in ("--config", "-config"):
            _exit_with(f"{arg}: this command takes --builder_config={value if sep else 'NAME'} "
                       "(--config is a config file in the cer_jax commands).")
    try:
        return app.parse_flags_with_usage(argv)
    except SystemExit as e:
        asked = any(arg.lstrip("-") in ("h", "?", "help", "helpshort", "helpfull", "helpxml")
                    for arg in argv[1:])
        if e.code == 1 and asked and not isinstance(e.__context__, flags.Error):
            sys.exit(0)
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
