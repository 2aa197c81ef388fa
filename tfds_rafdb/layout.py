"""RAF-DB's on-disk layout: its classes, file names and split ids, defined once, and the reader
that validates a raw tree (`basic/` or `compound/`) before anything is written.

The synthetic generator (`cer_jax.synthetic`) writes its trees with these same names. Everything
that can be wrong with the tree is found here, so the builder yields no example until
the whole tree has been checked and a failed build leaves no half-written dataset behind.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import re

import numpy as np
from etils import epath, epy

with epy.lazy_imports():  # on first use: cer_jax's configs read this module without Pillow
    from PIL import Image

# Class names in RAF-DB's label-id order: label id i (1-based) is TREE_CLASSES[tree][i - 1].
COMPOUND_CLASSES = (
    "Happily Surprised",
    "Happily Disgusted",
    "Sadly Fearful",
    "Sadly Angry",
    "Sadly Surprised",
    "Sadly Disgusted",
    "Fearfully Angry",
    "Fearfully Surprised",
    "Angrily Surprised",
    "Angrily Disgusted",
    "Disgustedly Surprised",
)
BASIC_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
# The 7-class ABAW / C-EXPR-DB challenge label space, in the challenge's index order.
ABAW7_CLASSES = (
    "Fearfully Surprised",
    "Happily Surprised",
    "Sadly Surprised",
    "Disgustedly Surprised",
    "Angrily Surprised",
    "Sadly Fearful",
    "Sadly Angry",
)
TREE_CLASSES = {"compound": COMPOUND_CLASSES, "basic": BASIC_CLASSES}

# The files of a tree, relative to its root (RAF-DB's `basic/` or `compound/` folder).
LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: RAF-DB's spelling
ALIGNED_DIR = "Image/aligned"
ORIGINAL_DIR = "Image/original"  # not read by the builder
MANUAL_ANNOTATION_DIR = "Annotation/manual"
ALIGNED_SUFFIX = "_aligned.jpg"  # Image/aligned/<stem>_aligned.jpg for <stem>.jpg
ANNOTATION_SUFFIX = "_manu_attri.txt"  # Annotation/manual/<stem>_manu_attri.txt
IMAGE_SIZE = 100
NUM_LANDMARKS = 5
# Image names are <split>_<id>.jpg; the prefix is the split. RAF-DB numbers train images with 4
# digits in the compound tree and 5 in the basic tree, test images with 4 in both.
SPLITS = ("train", "test")
DIGITS = {"compound": {"train": 4, "test": 4}, "basic": {"train": 5, "test": 4}}
VALIDATION_FRACTION = 0.1
# The builder's splits made of others: `train` is `train_fit` and `validation` together.
SPLITS_WITHIN = {"train": ("train_fit", "validation")}
# What an unpacked-too-little --manual_dir may still hold (named in the error's hint).
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_START_OF_SCAN, JPEG_END_OF_IMAGE = b"\xff\xda", b"\xff\xd9"  # never in entropy-coded data


def image_name(tree: str, split: str, index: int) -> str:
    """RAF-DB's name of the `index`-th (1-based) image of `split`: e.g. "train_0001.jpg"."""
    return f"{split}_{index:0{DIGITS[tree][split]}d}.jpg"


def stem(file_name: str) -> str:
    """ "train_0001.jpg" -> "train_0001"."""
    return file_name.removesuffix(".jpg")


_LAYOUT_LINES = (
    (LABEL_FILE, '"<name>.jpg <label>" per line, labels 1-based'),
    (
        f"{ALIGNED_DIR}/<stem>{ALIGNED_SUFFIX}",
        f"{IMAGE_SIZE}x{IMAGE_SIZE} aligned faces (RGB JPEG)",
    ),
    (f"{ORIGINAL_DIR}/<name>.jpg", "optional for this builder"),
    (
        f"{MANUAL_ANNOTATION_DIR}/<stem>{ANNOTATION_SUFFIX}",
        f'optional: {NUM_LANDMARKS} landmarks "x<TAB>y", then attributes',
    ),
)
EXPECTED_LAYOUT = "\n".join(
    [
        "Expected layout of --manual_dir (RAF-DB's `basic/` or `compound/` folder, unpacked as "
        "released):",
        "  <manual_dir>/",
        *(f"    {path:<42s}# {what}" for path, what in _LAYOUT_LINES),
        "Point --manual_dir (or `manual_dir=` of tfds.download.DownloadConfig) at that folder:",
        "the compound configs need the compound tree, the `basic` config the basic tree.",
    ]
)

# ASCII digits only: `\d` alone also takes e.g. Arabic-Indic digits, which int() reads.
_NAME = re.compile(rf"^({'|'.join(SPLITS)})_(\d+)\.jpg$", re.ASCII)


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
    above = next((a for a in list(root.parents)[:2] if (a / LABEL_FILE).exists()), None)
    if above is not None:  # e.g. the tree's Image/ or EmoLabel/ folder
        hint = f"\n{root} is inside the tree {above}: point --manual_dir at {above}."
    elif root.is_file():  # the downloaded archive itself, say
        hint = (f"\n{root} is a file, not a folder: if it is the RAF-DB archive, unpack it and "
                "point --manual_dir at the compound/ (or basic/) folder it holds.")
    elif nested := _trees_below(root):
        hint = f"\n{root} holds {' and '.join(f'{n}/' for n in nested)}: point --manual_dir at one."
    elif LABEL_FILE in missing and (texts := sorted(  # list_partition_label.txt, say
            p.name for p in _listing(root / "EmoLabel") if p.suffix == ".txt")):
        hint = (f"\n{root / 'EmoLabel'} holds {', '.join(texts)}: RAF-DB's label file is "
                f"{LABEL_FILE} (sic, \"patition\"); rename yours to that name.")
    elif ALIGNED_DIR in missing and (root / f"{ALIGNED_DIR}.zip").exists():
        hint = (f"\n{root / ALIGNED_DIR}.zip is still zipped: unzip it so that "
                f"{root / ALIGNED_DIR}/ holds the <stem>{ALIGNED_SUFFIX} images.")
    elif archives := sorted(p.name for p in _listing(root) if p.name.lower().endswith(ARCHIVES)):
        hint = (f"\n{root} holds {', '.join(archives)}, not unpacked: unpack it and point "
                "--manual_dir at the compound/ (or basic/) folder it holds.")
    raise RafDbLayoutError(
        f"RAF-DB tree at {root} is missing {', '.join(missing)}.{hint}\n{EXPECTED_LAYOUT}"
    )


def _trees_below(root: epath.Path) -> list[str]:
    """The RAF-DB trees one or two folders below `root` (e.g. "compound", "RAF-DB/basic"), for
    an error's hint: an archive unpacked into a folder of its own, or the folder above that."""
    found = []
    for child in _folders(root):
        if (child / LABEL_FILE).exists():
            found.append(child.name)
        elif not (child / "EmoLabel").exists():  # not a tree's own folder: look one deeper
            found += [f"{child.name}/{grandchild.name}" for grandchild in _folders(child)
                      if (grandchild / LABEL_FILE).exists()]
    return sorted(found)


def _folders(folder: epath.Path, most: int = 50) -> list[epath.Path]:
    """The sub-folders (not hidden) among the first `most` entries, for an error's hint: it
    looks, never searches (a folder of 15k images costs no 15k stats)."""
    return [p for p in sorted(_listing(folder))[:most] if not p.name.startswith(".") and p.is_dir()]


def read_bytes(path: epath.Path, fix: str = "") -> bytes:
    """The file's bytes; one that cannot be read (its permissions, a folder in its place) is
    a RafDbLayoutError naming it, not a traceback."""
    try:
        return path.read_bytes()
    except OSError as e:
        reason = " ".join((e.strerror or str(e)).split())
        raise RafDbLayoutError(
            f"{path} cannot be read ({reason}): it must be a file you can read (check its "
            f"permissions){fix}."
        ) from e


def _listing(folder: epath.Path) -> list[epath.Path]:
    """The folder's entries, for an error's hint: none when it cannot be listed."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _text_lines(path: epath.Path, fix: str = "") -> list[str]:
    """The lines of a UTF-8 text file, without a byte-order mark (epath's read_text ignores
    encoding="utf-8-sig")."""
    data = read_bytes(path, fix)
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise RafDbLayoutError(f"{path}: not a UTF-8 text file ({e}).") from e


def parse_label_file(root: epath.Path, num_labels: int, tree: str) -> list[tuple[str, int, int]]:
    """Returns (file name, raw label, line) per entry; raises naming the file and line on error."""
    path = root / LABEL_FILE
    entries, first_line = [], {}
    for line_no, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{path}, line {line_no}"
        # isascii: str.isdigit() is also True for "²", which int() then refuses with a traceback.
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise RafDbLayoutError(f'{where}: expected "<name>.jpg <label>", got {line!r}.')
        name, label = fields[0], int(fields[1])
        match = _NAME.match(name)
        if match is None:
            raise RafDbLayoutError(
                f"{where}: image name {name!r} must look like train_0001.jpg or test_0001.jpg "
                "(the prefix gives the split)."
            )
        split, digits = match.group(1), len(match.group(2))
        if digits != DIGITS[tree][split]:
            others = [t for t in DIGITS if DIGITS[t][split] == digits]
            hint = f": is --manual_dir the {others[0]} tree?" if others else "."
            raise RafDbLayoutError(
                f"{where}: {name} has {digits} digits, but the {tree} tree numbers {split} "
                f"images with {DIGITS[tree][split]}{hint}"
            )
        if not 1 <= label <= num_labels:
            # A compound tree's ids 8..11 under the basic config: the tree, not the label, is wrong.
            others = [t for t, names in TREE_CLASSES.items()
                      if t != tree and num_labels < label <= len(names)]
            hint = f": is --manual_dir the {others[0]} tree?" if others else "."
            raise RafDbLayoutError(
                f"{where}: label {label} of {name} is out of range: the {tree} tree has ids "
                f"1..{num_labels}{hint}"
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


def _check_image(path: epath.Path, name: str, line: int, label_file: epath.Path) -> bool:
    """Decodes the image; returns whether it must be re-encoded as 100x100 RGB JPEG: so is any
    format Pillow reads (a PNG saved as .jpg, say), like a CMYK, greyscale or wrong-size JPEG.
    Only a file that does not decode (by Pillow, or as training decodes it) is refused, with
    what to do about it."""
    fix = f"re-extract it from the RAF-DB archive, or remove line {line} of {label_file}."
    data = read_bytes(path, f", {fix.removesuffix('.')}")
    if not data:
        raise RafDbLayoutError(f"{path} (listed as {name}, line {line}) is empty: {fix}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode, size = image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        what = "a corrupt JPEG" if data.startswith(JPEG_MAGIC) else "not an image Pillow can read"
        detail = " ".join(str(e).split())  # one line
        raise RafDbLayoutError(
            f"{path} (listed as {name}, line {line}) is {what} ({detail}): {fix}"
        ) from e
    is_jpeg = data.startswith(JPEG_MAGIC)  # stored as-is only when already a JPEG stream
    # Pillow decodes some broken JPEGs that TensorFlow, the training pipeline's decoder,
    # refuses: stored as they are, training would stop at the first batch that holds one.
    if is_jpeg and data.rfind(JPEG_END_OF_IMAGE) < data.rfind(JPEG_START_OF_SCAN):
        raise RafDbLayoutError(
            f"{path} (listed as {name}, line {line}) is a corrupt JPEG (its data ends without "
            f"the end-of-image marker: cut short?): {fix}"
        )
    needs_reencode = not is_jpeg or mode != "RGB" or size != (IMAGE_SIZE, IMAGE_SIZE)
    if not needs_reencode and not _tensorflow_decodes(data):  # e.g. a stray marker mid-scan
        raise RafDbLayoutError(
            f"{path} (listed as {name}, line {line}) is a corrupt JPEG (Pillow reads it, "
            f"TensorFlow, which training decodes with, does not): {fix}"
        )
    return needs_reencode


def _tensorflow_decodes(data: bytes) -> bool:
    import tensorflow as tf  # here: only a build (which runs TFDS, so TF) validates images

    try:
        tf.io.decode_jpeg(data, channels=3)
    except tf.errors.InvalidArgumentError:
        return False
    return True


def _read_landmarks(path: epath.Path) -> np.ndarray | None:
    if not path.exists():
        return None
    lines = _text_lines(path, ", or delete it (images without it get has_landmarks=False)")
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
        if not (aligned / f"{stem(name)}{ALIGNED_SUFFIX}").exists()
    ]
    if missing:
        shown = ", ".join(f"{n} (line {ln})" for n, ln in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        hint, expected = "", f"{stem(missing[0][0])}{ALIGNED_SUFFIX}"
        if (aligned / missing[0][0]).exists():  # named like the original photos
            hint = (f" {aligned} holds {missing[0][0]} instead: rename the aligned images to "
                    f"<stem>{ALIGNED_SUFFIX}, as RAF-DB releases them.")
        elif other_case := next((p.name for p in _listing(aligned)
                                 if p.name.lower() == expected), None):  # e.g. ".JPG"
            hint = (f" {aligned} holds {other_case} instead, and file names are case-sensitive "
                    f"here: rename the aligned images to <stem>{ALIGNED_SUFFIX}, lower-case "
                    "as RAF-DB releases them.")
        elif deeper := next((p for p in _listing(aligned)  # aligned.zip unzipped into aligned/
                             if not p.name.lower().endswith(".jpg") and (p / expected).exists()),
                            None):
            hint = f" The images are one folder deeper, in {deeper}: move them up into {aligned}."
        raise RafDbLayoutError(
            f"{len(missing)} image(s) listed in {root / LABEL_FILE} are missing from {aligned}: "
            f"{shown}{more}. Expected <stem>{ALIGNED_SUFFIX} for each listed <stem>.jpg.{hint}"
        )
    records = []
    for name, label, line in entries:
        path = aligned / f"{stem(name)}{ALIGNED_SUFFIX}"
        annotation = root / MANUAL_ANNOTATION_DIR / f"{stem(name)}{ANNOTATION_SUFFIX}"
        records.append(
            Record(
                file_name=name,
                raw_label=label,
                split=name.split("_", 1)[0],
                aligned_path=path,
                needs_reencode=_check_image(path, name, line, root / LABEL_FILE),
                landmarks=_read_landmarks(annotation),
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
