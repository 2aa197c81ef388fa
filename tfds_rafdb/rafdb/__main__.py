"""`python -m tfds_rafdb.rafdb --config=compound --manual_dir=DIR --data_dir=D`.

Same flags and result as `tfds build tfds_rafdb/rafdb ...`, for environments where the `tfds`
CLI itself does not start (TFDS 4.9.10's CLI imports apache_beam and mlcroissant eagerly).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .rafdb_dataset_builder import BUILDER_CONFIGS, build


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tfds_rafdb.rafdb", description="Prepare RAF-DB as a TFDS dataset."
    )
    parser.add_argument("--config", choices=[c.name for c in BUILDER_CONFIGS], default="compound")
    parser.add_argument("--manual_dir", required=True, help="RAF-DB compound/ or basic/ folder")
    parser.add_argument("--data_dir", required=True, help="where TFDS writes the dataset")
    args = parser.parse_args(argv)
    builder = build(args.config, args.manual_dir, args.data_dir)
    print(f"rafdb/{args.config} ready in {builder.data_dir}")
    for name, split in builder.info.splits.items():
        print(f"  {name:<10s} {split.num_examples:6d} examples")


if __name__ == "__main__":
    main()
