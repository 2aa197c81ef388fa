"""RAF-DB (basic and compound) as a TFDS dataset, read from a manually obtained local copy.

RAF-DB is released on request only, so this builder never downloads: it reads
`dl_manager.manual_dir`, validates the whole tree first (see `layout.py`), then writes.
The description and citation TFDS shows come from README.md and CITATIONS.bib beside this file.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from tfds_rafdb import layout

JPEG_QUALITY = 95  # only for the rare image that is not already a 100x100 RGB JPEG
# A build records a sha256 of its tree's labels (in the dataset's metadata.json): a data_dir that
# holds a build from one tree (the synthetic one, say) must not go on serving it silently when the
# user names another. It is of the parsed entries, so an edit that leaves them the same (CRLF line
# ends, a byte-order mark, trailing spaces) does not refuse a good build.
SOURCE_KEY = "labels_sha256"
# Builds made before recorded the sha256 of the label file's raw bytes; still accepted while
# those bytes are unchanged, so an upgrade does not ask anyone to delete a good build.
RAW_SOURCE_KEY = "label_file_sha256"
# And a sha256 of the listed aligned images' sizes, so that images replaced under the same labels
# (re-extracted or re-aligned) are not served from the old build. Sizes survive a copy of the tree
# (mtimes do not); ~0.4 s for RAF-DB basic's 15k images on a local disk, so a local tree only:
# on an object store each size is a round trip.
SIZES_KEY = "image_sizes_sha256"


class SourceMismatchError(layout.RafDbLayoutError):
    """data_dir holds a build from another RAF-DB tree than manual_dir."""


def label_file_digest(root: epath.Path) -> str:
    """The sha256 of the label file's bytes (what builds before `SOURCE_KEY` recorded)."""
    return hashlib.sha256(layout.read_bytes(root / layout.LABEL_FILE)).hexdigest()


def labels_digest(entries: Iterable[tuple[str, int]]) -> str:
    """The sha256 of the (file name, raw label) pairs, in name order: the same for any label
    file that parses to the same labels, whatever its line ends, spacing or line order."""
    text = "".join(f"{name} {label}\n" for name, label in sorted(entries))
    return hashlib.sha256(text.encode()).hexdigest()


def image_sizes_digest(root: epath.Path, names: Iterable[str]) -> str | None:
    """The sha256 of the (file name, aligned image size) pairs, in name order (-1: missing);
    None for a tree that is not on a local disk."""
    if "://" in os.fspath(root):
        return None
    aligned = epath.Path(root) / layout.ALIGNED_DIR
    lines = []
    for name in sorted(names):
        try:
            size = (aligned / f"{layout.stem(name)}{layout.ALIGNED_SUFFIX}").stat().length
        except OSError:
            size = -1
        lines.append(f"{name} {size}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclasses.dataclass(eq=False)
class RafDbConfig(tfds.core.BuilderConfig):
    """Which RAF-DB tree to read and how its 1-based label ids map to class indices."""

    tree: str = "compound"
    class_names: tuple[str, ...] = ()
    # label_map[raw_id - 1] is the class index, or None when the class is left out.
    label_map: tuple[int | None, ...] = ()


BUILDER_CONFIGS = [
    RafDbConfig(
        name="compound",
        description="11 compound classes; RAF-DB ids 1..11 -> 0..10.",
        tree="compound",
        class_names=layout.COMPOUND_CLASSES,
        label_map=tuple(range(len(layout.COMPOUND_CLASSES))),
    ),
    RafDbConfig(
        name="compound_abaw7",
        description=(
            "The compound tree in the 7-class ABAW/C-EXPR-DB label space and order; RAF-DB ids "
            "2, 6, 7, 10 left out."
        ),
        tree="compound",
        class_names=layout.ABAW7_CLASSES,
        label_map=tuple(
            layout.ABAW7_CLASSES.index(name) if name in layout.ABAW7_CLASSES else None
            for name in layout.COMPOUND_CLASSES
        ),
    ),
    RafDbConfig(
        name="basic",
        description="7 basic classes; RAF-DB ids 1..7 -> 0..6.",
        tree="basic",
        class_names=layout.BASIC_CLASSES,
        label_map=tuple(range(len(layout.BASIC_CLASSES))),
    ),
]


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for RAF-DB (`rafdb/compound`, `rafdb/compound_abaw7`, `rafdb/basic`)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_BUILDER_CONFIG_NAME = "compound"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
RAF-DB cannot be downloaded automatically: its owners release it for non-commercial research on
request. Ask for it at http://www.whdeng.cn/RAF/model1.html (the licence agreement must be
signed by a researcher), unpack the archive, and pass the `compound/` (or `basic/`) folder:

  python -m tfds_rafdb.rafdb --builder_config=compound --manual_dir=/data/RAF-DB/compound \\
      --data_dir=D
  tfds build tfds_rafdb/rafdb --config=compound --manual_dir=/data/RAF-DB/compound --data_dir=D

{layout.EXPECTED_LAYOUT}
"""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file, where TFDS finds README.md, CITATIONS.bib, TAGS.txt and dummy_data/.

        TFDS 4.9.10's own lookup imports `importlib_resources`, which it only installs on
        Python < 3.9, so it fails on 3.11 for builders outside `tensorflow_datasets`.
        """
        return epath.Path(__file__)

    # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size, ...)"
    # before and "... downloaded and prepared ..." after a build; RAF-DB is never downloaded.
    def _log_download_bytes(self) -> None:
        print(f"Preparing {self.info.full_name} from --manual_dir (nothing is downloaded) in "
              f"{self.data_dir} ...", flush=True)

    def _log_download_done(self) -> None:
        print(f"Dataset {self.info.full_name} prepared in {self.data_dir}; later runs reuse it.",
              flush=True)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(layout.IMAGE_SIZE, layout.IMAGE_SIZE, 3), encoding_format="jpeg"
                    ),
                    "label": tfds.features.ClassLabel(names=self.builder_config.class_names),
                    "file_name": tfds.features.Text(),
                    "landmarks": tfds.features.Tensor(
                        shape=(layout.NUM_LANDMARKS, 2),
                        dtype=np.float32,
                        doc=(
                            "Manual (x, y) of the eyes, nose tip and mouth corners in the ORIGINAL "
                            "photo's pixels, as RAF-DB gives them; zeros without has_landmarks."
                        ),
                    ),
                    "has_landmarks": tfds.features.Scalar(
                        dtype=np.bool_, doc="Whether Annotation/manual/ had this image's file."
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
            homepage="http://www.whdeng.cn/RAF/model1.html",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Validates the whole tree, then hands out one generator per split."""
        config = self.builder_config
        root = epath.Path(dl_manager.manual_dir)
        records = layout.read_tree(root, num_labels=len(config.label_map), tree=config.tree)
        self.info.metadata[SOURCE_KEY] = labels_digest((r.file_name, r.raw_label) for r in records)
        sizes = image_sizes_digest(root, (r.file_name for r in records))
        if sizes:
            self.info.metadata[SIZES_KEY] = sizes
        validation = layout.validation_names(records)
        kept = [r for r in records if config.label_map[r.raw_label - 1] is not None]
        _log_left_out(records, config)
        train = [r for r in kept if r.split == "train"]
        # layout.SPLITS_WITHIN says what train holds (fusion reports a member trained on it).
        splits = {
            "train": train,
            "validation": [r for r in train if r.file_name in validation],
            "train_fit": [r for r in train if r.file_name not in validation],
            "test": [r for r in kept if r.split == "test"],
        }
        _check_no_split_empty(splits, root, config)
        return {name: self._generate_examples(records) for name, records in splits.items()}

    def _generate_examples(self, records: list[layout.Record]):
        label_map = self.builder_config.label_map
        no_landmarks = np.zeros((layout.NUM_LANDMARKS, 2), np.float32)
        for record in records:
            example = {
                "image": _jpeg_bytes(record),
                "label": label_map[record.raw_label - 1],
                "file_name": record.file_name,
                "landmarks": no_landmarks if record.landmarks is None else record.landmarks,
                "has_landmarks": record.landmarks is not None,
            }
            yield record.file_name, example


def _jpeg_bytes(record: layout.Record) -> bytes:
    """The original JPEG bytes, or a 100x100 RGB re-encode when the file is not one already."""
    data = record.aligned_path.read_bytes()
    if not record.needs_reencode:
        return data
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB").resize((layout.IMAGE_SIZE,) * 2, Image.Resampling.BICUBIC)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _check_no_split_empty(splits: dict[str, list[layout.Record]], root: epath.Path,
                          config: RafDbConfig) -> None:
    """TFDS cannot write an empty split: it stopped the build after writing the others with
    'AssertionError: Failed to finalize writing of split "test": No examples were yielded.'"""
    empty = [name for name, records in splits.items() if not records]
    if not empty:
        return
    labels = root / layout.LABEL_FILE
    kept = f" of the classes rafdb/{config.name} keeps" if None in config.label_map else ""
    for split in ("train", "test"):
        if split in empty:
            raise layout.RafDbLayoutError(
                f"{labels} lists no {split} image{kept} "
                f"({layout.image_name(config.tree, split, 1)}, ...), so the {split} split "
                "would be empty: RAF-DB's label file lists both splits; list those images too."
            )
    raise layout.RafDbLayoutError(
        f"{labels}: no class{kept} has 2 or more train images, so the validation split (~10 % "
        "of each class's train images, held out) would be empty: list more train images."
    )


def _log_left_out(records: list[layout.Record], config: RafDbConfig) -> None:
    """Logs, per RAF-DB class the config leaves out, how many images it drops."""
    left_out = collections.Counter(
        r.raw_label for r in records if config.label_map[r.raw_label - 1] is None
    )
    if left_out:
        names = layout.TREE_CLASSES[config.tree]
        listed = ", ".join(f"{names[i - 1]}: {left_out[i]}" for i in sorted(left_out))
        logging.info("rafdb/%s leaves out %d images (%s).", config.name, left_out.total(), listed)


def check_built_from(builder: tfds.core.DatasetBuilder, manual_dir: str) -> None:
    """A prepared dataset must come from the tree named now (when its build recorded one): its
    labels match, or (a build from before `SOURCE_KEY`) its label file's bytes do; and its
    images' sizes match (when its build recorded them and the tree is local)."""
    root = epath.Path(manual_dir)
    layout.check_root(root)
    metadata = builder.info.metadata or {}
    if SOURCE_KEY not in metadata and RAW_SOURCE_KEY not in metadata:
        return
    if metadata.get(RAW_SOURCE_KEY) == label_file_digest(root):
        return
    differs = f"its {layout.LABEL_FILE} differs"
    if SOURCE_KEY in metadata:
        config = builder.builder_config
        entries = layout.parse_label_file(root, len(config.label_map), config.tree)
        if metadata[SOURCE_KEY] == labels_digest((name, label) for name, label, _ in entries):
            sizes = SIZES_KEY in metadata and image_sizes_digest(root, (e[0] for e in entries))
            if not sizes or sizes == metadata[SIZES_KEY]:
                return
            differs = (f"same labels, but its {layout.ALIGNED_DIR} images differ in size: "
                       "replaced since the build?")
    raise SourceMismatchError(
        f"{builder.data_dir} holds rafdb/{builder.builder_config.name} built from another "
        f"tree than {root} ({differs}). Delete {builder.data_dir} to "
        f"build it from {root}, or give another data_dir."
    )


class DataDirError(layout.RafDbLayoutError):
    """The folder the dataset is built into cannot be written; `problem` says why and the fix
    (a caller that knows the key the folder came from names it in front)."""

    def __init__(self, data_dir: str, problem: str):
        super().__init__(f"--data_dir={data_dir}: {problem}")
        self.problem = problem


def data_dir_problem(data_dir: str | None) -> str | None:
    """Why the dataset cannot be written into the local folder `data_dir` (made if missing;
    None = TFDS's default, ~/tensorflow_datasets or $TFDS_DATA_DIR), or None when it can (or
    `data_dir` is remote: object stores are checked by writing)."""
    folder = tfds.core.constants.DATA_DIR if data_dir is None else data_dir
    if "://" in folder:
        return None
    folder = os.path.expanduser(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as e:
        reason = e.strerror or str(e)
        return (f"cannot write there ({reason}); give a folder you can write to (it is made if "
                "missing).")
    return None


def build(config_name: str, manual_dir: str, data_dir: str | None = None
          ) -> tfds.core.DatasetBuilder:
    """Prepares `rafdb/<config_name>` in `data_dir` (None: TFDS's default) from `manual_dir`
    unless already prepared from that same tree."""
    if data_dir is not None and "://" not in data_dir and os.path.isfile(data_dir):
        raise layout.RafDbLayoutError(f"--data_dir={data_dir} is a file; give the folder the "
                                      "TFDS dataset goes in (it is made if missing).")
    builder = Builder(config=config_name, data_dir=data_dir)
    # data_path first: TFDS's is_prepared() warns "Variant folder ... has no dataset_info.json"
    # of a folder that a first build has not made yet.
    if builder.data_path.exists() and builder.is_prepared():
        check_built_from(builder, manual_dir)
    else:  # a missing tree or an unwritable data_dir: our message, before TFDS makes any folder
        layout.check_root(epath.Path(manual_dir))
        problem = data_dir_problem(data_dir)
        if problem:
            raise DataDirError(tfds.core.constants.DATA_DIR if data_dir is None else data_dir,
                               problem)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    return builder
