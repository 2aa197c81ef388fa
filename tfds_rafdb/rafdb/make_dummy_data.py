"""Regenerates `dummy_data/`: tiny synthetic trees for `rafdb_dataset_builder_test.py`.

    python -m tfds_rafdb.rafdb.make_dummy_data

A developer tool, not used by the builder. Each tree is a small `cer_jax.synthetic` tree without
`Image/original/` (the builder does not read it), plus two cases the builder must handle: one
aligned image stored as a 90x90 greyscale JPEG (re-encoded to 100x100 RGB when built) and one
image without its manual-landmark file (`has_landmarks=False`).
"""

from __future__ import annotations

import shutil

from etils import epath
from PIL import Image

from cer_jax import synthetic

DUMMY_DATA = epath.Path(__file__).parent / "dummy_data"
TREES = {"compound": (24, 11), "basic": (16, 7)}  # kind: (num_train, num_test)


def main() -> None:
    for kind, (num_train, num_test) in TREES.items():
        root = DUMMY_DATA / kind
        if root.exists():
            shutil.rmtree(root)
        synthetic.write_tree(root, kind=kind, num_train=num_train, num_test=num_test, seed=1)
        shutil.rmtree(root / "Image/original")
        grey = root / "Image/aligned/test_0001_aligned.jpg"
        Image.open(grey).convert("L").resize((90, 90)).save(grey, format="JPEG", quality=90)
        (root / "Annotation/manual/test_0002_manu_attri.txt").unlink()
        print(f"wrote {root}")


if __name__ == "__main__":
    main()
