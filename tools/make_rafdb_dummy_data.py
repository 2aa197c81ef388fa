"""Regenerates `tfds_rafdb/rafdb/dummy_data/`, the tiny trees of `rafdb_dataset_builder_test.py`.

    python tools/make_rafdb_dummy_data.py [--out=tfds_rafdb/rafdb/dummy_data]

A developer tool: it draws with `cer_jax.synthetic` into the builder package's test data, so it
lives outside both (the builder never imports cer_jax). Each tree is a small synthetic tree
without `Image/original/` (the builder does not read it), plus two cases the builder must
handle: one aligned image stored as a 90x90 greyscale JPEG (re-encoded to 100x100 RGB when
built) and one image without its manual-landmark file (`has_landmarks=False`).

Regenerating replaces the old `<out>/compound/` and `<out>/basic/`, so it refuses (one line,
exit status 2) unless each is missing, empty or a synthetic tree: `--out` pointed at a real
RAF-DB folder must not delete the user's data. Each tree is drawn beside the old one
(`<out>/.<kind>.partial/`) and replaces it once complete: an interrupted run keeps the old tree.
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Sequence

from PIL import Image

from cer_jax import cli, synthetic
from tfds_rafdb import layout
from tfds_rafdb.rafdb import rafdb_dataset_builder

# Where the builder's tests read them (rafdb_dataset_builder_test._DUMMY_DATA).
DUMMY_DATA = pathlib.Path(rafdb_dataset_builder.Builder.code_path).parent / "dummy_data"
TREES = {"compound": (24, 11), "basic": (16, 7)}  # kind: (train images, test images)


def check_out(out: pathlib.Path) -> None:
    """Before anything is deleted: each <kind>/ tree under `out` is missing, empty or one that
    `cer_jax.synthetic` drew (its marker file), never e.g. a real RAF-DB tree."""
    synthetic.check_folder("out", out)
    for kind in TREES:
        root = out / kind
        if root.is_dir() and (not any(root.iterdir()) or synthetic.is_synthetic_tree(root)):
            continue
        if root.exists():
            raise synthetic.OutputPathError(
                f"--out={out}: {root} is not a synthetic tree (no {synthetic.MARKER_FILE}; a real "
                "RAF-DB tree?) and regenerating would delete it. Give --out a new or empty "
                "folder, or the builder's dummy_data/.")


def write_dummy_data(out: pathlib.Path) -> None:
    check_out(out)
    for kind, (num_train_images, num_test_images) in TREES.items():
        staged = out / f".{kind}.partial"
        if staged.exists():  # an interrupted run's
            shutil.rmtree(staged)
        synthetic.write_tree(
            staged,
            kind=kind,
            num_train_images=num_train_images,
            num_test_images=num_test_images,
            seed=1,
        )
        shutil.rmtree(staged / layout.ORIGINAL_DIR)
        grey_name = layout.stem(layout.image_name(kind, "test", 1)) + layout.ALIGNED_SUFFIX
        grey = staged / layout.ALIGNED_DIR / grey_name
        Image.open(grey).convert("L").resize((90, 90)).save(grey, format="JPEG", quality=90)
        no_landmarks = layout.stem(layout.image_name(kind, "test", 2)) + layout.ANNOTATION_SUFFIX
        (staged / layout.MANUAL_ANNOTATION_DIR / no_landmarks).unlink()
        root = out / kind
        if root.exists():
            shutil.rmtree(root)
        staged.rename(root)
        print(f"wrote {root}")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    out = pathlib.Path(cli.FLAGS.out)
    try:
        write_dummy_data(out)
    except OSError as e:  # a folder it cannot make or write, a full disk: one line
        raise synthetic.cannot_write("out", out, e) from e


if __name__ == "__main__":
    # Defined only when run as a program, so that tests can import this module.
    cli.define_path_flag("out", str(DUMMY_DATA), "Folder to write <kind>/ trees into.")
    cli.run(main)
