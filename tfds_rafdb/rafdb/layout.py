"""Reads and validates a raw RAF-DB tree (`basic/` or `compound/`) before anything is written.

Everything that can be wrong with the tree is found here, so the builder yields no example until
the whole tree has been checked and a failed build leaves no half-written dataset behind.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import re

import numpy as np
from etils import epath
from PIL import Image

LABEL_FILE = "EmoLabel/list_patition_label.txt"
ALIGNED_DIR = "Image/aligned"
MANUAL_ANNOTATION_DIR = "Annotation/manual"
IMAGE_SIZE = 100
NUM_LANDMARKS = 5
VALIDATION_FRACTION = 0.1
JPEG_MAGIC = b"\xff\xd8\xff"
# RAF-DB numbers train images with 4 digits in the compound tree and 5 in the basic tree.
TRAIN_DIGITS = {"compound": 4, "basic": 5}

EXPECTED_LAYOUT = """\
Expected layout of --manual_dir (RAF-DB's `basic/` or `compound/` folder, unpacked as released):
  <manual_dir>/
    EmoLabel/list_patition_label.txt          # "<name>.jpg <label>" per line, labels 1-based
    Image/aligned/<stem>_aligned.jpg           # 100x100 aligned faces (RGB JPEG)
    Image/original/<name>.jpg                  # optional for this builder
    Annotation/manual/<stem>_manu_attri.txt    # optional: 5 landmarks "x<TAB>y", then attributes
Point --manual_dir (or `manual_dir=` of tfds.download.DownloadConfig) at that folder: the
compound configs need the compound tree, the `basic` config the basic tree."""

_NAME = re.compile(r"^(train|test)_(\d+)\.jpg$")


class RafDbLayoutError(ValueError):
    """The raw RAF-DB tree is missing files, or holds a file that cannot be read as RAF-DB's."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One validated image of the tree."""

    file_name: str  # e.g. "train_0001.jpg"
    raw_label: int  # RAF-DB's 1-based label id
    split: str  # "train" or "test", from the name prefix
    aligned_path: epath.Path
    needs_reencode: bool  # False when the file already is a 100x100 RGB JPEG
    landmarks: np.ndarray | None  # (5, 2) float32 in the ORIGINAL image's pixel coordinates


def check_root(root: epath.Path) -> None:
    """Raises with the expected layout when the label file or the aligned images are missing."""
    missing = [p for p in (LABEL_FILE, ALIGNED_DIR) if not (root / p).exists()]
    if not missing:
        return
    hint = ""
    nested = [d.name for d in (root / "basic", root / "compound") if (d / LABEL_FILE).exists()]
    if nested:
        hint = f"\n{root} holds {' and '.join(f'{n}/' for n in nested)}: point --manual_dir at one."
    raise RafDbLayoutError(
        f"RAF-DB tree at {root} is missing {', '.join(missing)}.{hint}\n{EXPECTED_LAYOUT}"
    )


def parse_label_file(root: epath.Path, num_labels: int, tree: str) -> list[tuple[str, int, int]]:
    """Returns (file name, raw label, line) per entry; raises naming the file and line on error."""
    path = root / LABEL_FILE
    entries, first_line = [], {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path}, line {line_no}"
        if len(fields) != 2 or not fields[1].isdigit():
            raise RafDbLayoutError(f'{where}: expected "<name>.jpg <label>", got {line!r}.')
        name, label = fields[0], int(fields[1])
        match = _NAME.match(name)
        if match is None:
            raise RafDbLayoutError(
                f"{where}: image name {name!r} must look like train_0001.jpg or test_0001.jpg "
                "(the prefix gives the split)."
            )
        if match.group(1) == "train" and len(match.group(2)) != TRAIN_DIGITS[tree]:
            other = "basic" if tree == "compound" else "compound"
            raise RafDbLayoutError(
                f"{where}: {name} has {len(match.group(2))} digits, but the {tree} tree numbers "
                f"train images with {TRAIN_DIGITS[tree]}: is --manual_dir the {other} tree?"
            )
        if not 1 <= label <= num_labels:
            raise RafDbLayoutError(
                f"{where}: label {label} of {name} is out of range: the {tree} tree has ids "
                f"1..{num_labels}."
            )
        if name in first_line:
            raise RafDbLayoutError(
                f"{path}: duplicate entry {name} on lines {first_line[name]} and {line_no}; "
                "keep one."
            )
        first_line[name] = line_no
        entries.append((name, label, line_no))
    if not entries:
        raise RafDbLayoutError(f"{path} lists no images.\n{EXPECTED_LAYOUT}")
    return entries


def _check_image(path: epath.Path, name: str, line: int) -> bool:
    """Decodes the image; returns whether it must be re-encoded as 100x100 RGB JPEG."""
    data = path.read_bytes()
    if not data.startswith(JPEG_MAGIC):
        raise RafDbLayoutError(f"{path} (listed as {name}, line {line}) is not a JPEG file.")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size = image.mode, image.size
    except (OSError, SyntaxError, ValueError) as e:
        raise RafDbLayoutError(
            f"{path} (listed as {name}, line {line}) is a corrupt JPEG: {e}."
        ) from e
    return mode != "RGB" or size != (IMAGE_SIZE, IMAGE_SIZE)


def _read_landmarks(path: epath.Path) -> np.ndarray | None:
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    points = []
    for line_no in range(1, NUM_LANDMARKS + 1):
        line = lines[line_no - 1] if line_no <= len(lines) else ""
        try:
            x, y = (float(v) for v in line.split())
        except ValueError:
            raise RafDbLayoutError(
                f'{path}, line {line_no}: expected a landmark "x<TAB>y", got {line!r}. Fix or '
                "delete the file (images without it get has_landmarks=False)."
            ) from None
        points.append((x, y))
    return np.asarray(points, dtype=np.float32)


def read_tree(root: epath.Path, num_labels: int, tree: str) -> list[Record]:
    """Validates the whole tree (label file, images, landmark files); returns its records."""
    root = epath.Path(root)
    check_root(root)
    entries = parse_label_file(root, num_labels, tree)
    aligned = root / ALIGNED_DIR
    missing = [
        (name, line)
        for name, _, line in entries
        if not (aligned / name.replace(".jpg", "_aligned.jpg")).exists()
    ]
    if missing:
        shown = ", ".join(f"{n} (line {ln})" for n, ln in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise RafDbLayoutError(
            f"{len(missing)} image(s) listed in {root / LABEL_FILE} are missing from {aligned}: "
            f"{shown}{more}. Expected <stem>_aligned.jpg for each listed <stem>.jpg."
        )
    records = []
    for name, label, line in entries:
        stem = name[: -len(".jpg")]
        path = aligned / f"{stem}_aligned.jpg"
        records.append(
            Record(
                file_name=name,
                raw_label=label,
                split=name.split("_", 1)[0],
                aligned_path=path,
                needs_reencode=_check_image(path, name, line),
                landmarks=_read_landmarks(root / MANUAL_ANNOTATION_DIR / f"{stem}_manu_attri.txt"),
            )
        )
    return records


def validation_names(records: list[Record]) -> set[str]:
    """A stratified ~10 % of every class of `train`, chosen by a hash of the file name.

    Sorting each class's names by sha256 and taking the first round(10 %) (at least one when the
    class has two or more train images) gives the same split on every machine and every build.
    """
    by_label = collections.defaultdict(list)
    for record in records:
        if record.split == "train":
            by_label[record.raw_label].append(record.file_name)
    chosen = set()
    for names in by_label.values():
        count = int(len(names) * VALIDATION_FRACTION + 0.5)
        if len(names) >= 2:
            count = max(count, 1)
        names.sort(key=lambda n: hashlib.sha256(n.encode()).hexdigest())
        chosen.update(names[:count])
    return chosen
