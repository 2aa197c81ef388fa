"""Where examples come from: a TFDS dataset (RAF-DB or any other) or an image-folder tree.

A source knows its classes and split sizes and hands out any subset of a split (given as
sorted example indices: a host's shard) as a tf.data.Dataset of {"image": uint8 [H, W, 3],
"label": int32, "file_name": string, "index": int64 (position in the split)} in the split's
stored order. Preparing data (drawing the synthetic RAF-DB, building RAF-DB from a
manual directory) happens here, once, on first use; nothing is ever downloaded.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from cer_jax import paths, sharding
from cer_jax.errors import UserError
from tfds_rafdb import layout

# What tf.io.decode_image reads (GIF: its first frame); other files are skipped and logged.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The folder splits whose skipped files were logged already: (root, split, count).
_SKIPS_LOGGED: set[tuple[str, str, int]] = set()
SMOKE_HINT = (
    "To run without RAF-DB, use the built-in synthetic data: `--config.dataset.synthetic=True` "
    "or one of the `:smoke` configs."
)


class DataConfigError(UserError):
    """A dataset / input config that cannot work; the message names the key and the fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset before reading it."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    # Per split, a sha256 of what it lists (an image folder's <class>/<file> names), where the
    # source can change under a run: its counts alone missed an image moved between classes.
    listings: dict[str, str] = dataclasses.field(default_factory=dict)


@functools.cache
def import_tf() -> Any:
    """Imports TensorFlow for tf.data only, hiding accelerators so that JAX keeps them."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # Unknown kind, or TF already initialised.
            pass
    return tf


def as_written(fn: Callable) -> Callable:
    """A tf.data function traced as written, without AutoGraph's conversion: ours branch on
    Python values only, and converting them cost ~2 s per process (the training augmentation)
    and left generated source files in the temp folder."""
    return import_tf().autograph.experimental.do_not_convert(fn)


class Source(Protocol):
    info: DatasetInfo

    def examples(self, split: str, indices: np.ndarray) -> Any:
        """The examples of `split` at sorted `indices`, in stored order, as a tf.data.Dataset."""

    def labels(self, split: str) -> np.ndarray:
        """All labels of `split` (int64 [N]) in stored order, without decoding images."""

    def find_unreadable(self, split: str, indices: np.ndarray) -> str | None:
        """The first file at `indices` of `split` that does not decode, if the source knows."""

    def unreadable_fix(self) -> str:
        """What to do about a file that find_unreadable named (after the problem is said)."""

    def unreadable_files(self, split: str) -> list[str]:
        """Every file of `split` that does not decode as an image (checked before training)."""


def check_split(info: DatasetInfo, split: str, key: str) -> None:
    if split not in info.split_sizes:
        raise DataConfigError(
            f"{key}={split!r}: dataset {info.name!r} has no split {split!r}. "
            f"Available splits: {', '.join(sorted(info.split_sizes))}. Set {key} to one of them."
        )


def open_source(config: ml_collections.ConfigDict) -> Source:
    """Opens (and prepares on first use) the source described by the `dataset` config block."""
    if config.name == "folder":
        return FolderSource(config)
    return TfdsSource(config)


# --------------------------------------------------------------------------------------------
# TFDS


def _expand(path: str | None) -> str | None:
    return None if path is None else os.path.expanduser(str(path))


def _split_name(name: str) -> tuple[str, str | None]:
    """ "rafdb/compound:1.0.0" -> ("rafdb", "compound")."""
    base = name.split(":")[0]
    parts = base.split("/")
    return parts[0], (parts[1] if len(parts) > 1 else None)


# The config keys of the synthetic tree's settings, as its errors name them.
_SYNTHETIC_KEYS = {"train": "config.dataset.synthetic_num_train_images",
                   "test": "config.dataset.synthetic_num_test_images",
                   "seed": "config.dataset.synthetic_seed"}


def _synthetic_tree(config: ml_collections.ConfigDict, kind: str) -> str:
    """Draws the synthetic RAF-DB tree into cache_dir once; returns its root."""
    from cer_jax import synthetic

    # Before the cache is looked at: a count that is not in the cache's name is no cached tree.
    synthetic.check_sizes(kind, config.synthetic_num_train_images,
                          config.synthetic_num_test_images, config.synthetic_seed,
                          keys=_SYNTHETIC_KEYS)
    cache = _expand(config.cache_dir)
    if paths.is_remote(cache):  # os.makedirs would make a local folder named "gs:"
        raise DataConfigError(
            f"config.dataset.cache_dir={config.cache_dir!r}: the synthetic tree is drawn and "
            "built on this machine's disk; give a local folder (the default is "
            "~/.cache/cer_jax)."
        )
    # The generator version is part of the key: a changed drawing never reuses an older tree.
    tag = (
        f"{kind}-{config.synthetic_num_train_images}-{config.synthetic_num_test_images}"
        f"-seed{config.synthetic_seed}-v{synthetic.VERSION}"
    )
    root = os.path.join(cache, "synthetic", tag)
    if os.path.isdir(root):
        return root
    try:
        os.makedirs(os.path.dirname(root), exist_ok=True)
        # Write next to the final place and rename, so an interrupted run leaves no half tree.
        tmp = tempfile.mkdtemp(prefix=f".{tag}-", dir=os.path.dirname(root))
    except OSError as e:
        raise DataConfigError(
            f"config.dataset.cache_dir={config.cache_dir!r}: cannot write there "
            f"({paths.error_reason(e)}); give a folder you can write to (it is made if missing)."
        ) from e
    try:
        synthetic.write_tree(
            tmp,
            kind=kind,
            num_train_images=config.synthetic_num_train_images,
            num_test_images=config.synthetic_num_test_images,
            seed=config.synthetic_seed,
        )
        os.rename(tmp, root)
    except OSError:
        if not os.path.isdir(root):  # Not a lost race with another process: a real failure.
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


# The "<dataset> in <data_dir>" that this process has opened already (with several processes:
# all of them together, see _prepared); later openings need no barrier.
_OPENED_TOGETHER: set[str] = set()


def _prepared(builder: Any, reopen: Callable[[], Any], build: Callable[[], Any], key: str
              ) -> Any:
    """`builder`, built first if it is not prepared.

    With several processes, the first opening of `key` is collective (every process opens the
    same data at the same point of the run): process 0 builds while the others wait, so a
    shared disk is built once; a process that still finds its data_dir unprepared after that
    (a disk of its own) builds its own copy. A build error on process 0 stops every process
    (not a hang, nor the same failing build repeated everywhere)."""
    if key not in _OPENED_TOGETHER and jax.process_count() > 1:
        error = None
        if jax.process_index() == 0 and not _is_prepared(builder):
            try:
                builder = _build_or_join(build, reopen)
            except Exception as e:  # raised after the barrier, where the others are
                error = e
        # A barrier that also tells every process whether one failed: process 0's build, or a
        # check before this point on a host that lacks a path (trainer's stop_together).
        sharding.raise_if_any_failed(error, f"the preparation of {key}")
        builder = reopen()  # process 0's build, on a shared disk
    _OPENED_TOGETHER.add(key)
    if not _is_prepared(builder):
        builder = _build_or_join(build, reopen)
    return builder


def _is_prepared(builder: Any) -> bool:
    """builder.is_prepared(), without TFDS's "Variant folder ... has no dataset_info.json"
    warning for a dataset folder not made yet (three of them in a first build's log)."""
    return builder.data_path.exists() and builder.is_prepared()


def _build_or_join(build: Callable[[], Any], reopen: Callable[[], Any]) -> Any:
    """build(); when it fails because another process sharing the disk finished the same build
    first (TFDS writes to a temporary directory and its final rename then fails), theirs."""
    try:
        return build()
    except Exception:
        builder = reopen()
        if not _is_prepared(builder):
            raise
        logging.info("%s was built by another process meanwhile; using it.", builder.data_dir)
        return builder


# The (dataset, data_dir, manual_dir) whose build this process has matched to its tree: a run
# opens its source again at each evaluation, and the check stats every listed image (~0.4 s).
_MATCHED: set[tuple[str, str | None, str | None]] = set()


class TfdsSource:
    """A TFDS dataset; "rafdb/*" is built from `manual_dir` (or the synthetic tree) if needed."""

    def __init__(self, config: ml_collections.ConfigDict):
        import_tf()
        import tensorflow_datasets as tfds

        self._config = config
        self._tfds = tfds
        family, builder_config = _split_name(config.name)
        data_dir, manual_dir = _expand(config.data_dir), _expand(config.manual_dir)
        written = "cache_dir" if config.synthetic else "data_dir"  # the folder that is written
        folder = _expand(config[written])
        blocker = folder and paths.file_in_the_way(folder)
        if blocker:
            raise DataConfigError(f"config.dataset.{written}={folder!r}: {blocker} is a file, "
                                  "not a folder; give a folder path.")
        if config.synthetic:
            if family != "rafdb":
                raise DataConfigError(
                    f"config.dataset.synthetic=True draws a synthetic RAF-DB, but "
                    f"config.dataset.name={config.name!r}. Set config.dataset.name to "
                    "'rafdb/compound', 'rafdb/compound_abaw7' or 'rafdb/basic', or set "
                    "config.dataset.synthetic=False."
                )
            kind = "basic" if builder_config == "basic" else "compound"
            manual_dir = _synthetic_tree(config, kind)
            data_dir = manual_dir + "-tfds"
        rafdb = None
        if family == "rafdb":
            from tfds_rafdb import rafdb  # Registers the builder with TFDS.
        try:
            builder = tfds.builder(config.name, data_dir=data_dir)
        except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataConfigError(
                f"config.dataset.name={config.name!r} is not a known TFDS dataset "
                f"({first_line}). Use a registered TFDS name (e.g. 'rafdb/compound', "
                "'rafdb/compound_abaw7', 'rafdb/basic') or 'folder' with "
                "config.dataset.folder pointing at a <split>/<class>/<image> tree."
            ) from e
        except AssertionError as e:  # TFDS's word for a version it does not have
            found = re.search(r"cannot be loaded at version .*", str(e))
            said = (found.group(0) if found else str(e).strip()).rstrip(".")
            raise DataConfigError(
                f"config.dataset.name={config.name!r}: {family} {said}. Name one of those "
                f"versions after the ':', or none (the newest): {config.name.split(':')[0]!r}."
            ) from e

        def check_tree() -> None:
            tree = epath.Path(manual_dir)  # may be gs://
            if tree.is_file():  # the archive, say: the builder's layout check says what to do
                return
            if not tree.is_dir() or next(tree.iterdir(), None) is None:
                raise DataConfigError(
                    f"config.dataset.manual_dir={manual_dir!r} does not exist or is empty. "
                    "Point it at the unpacked RAF-DB tree (the folder holding EmoLabel/ and "
                    "Image/)."
                )

        matched = (config.name, data_dir, manual_dir)
        if (rafdb is not None and manual_dir and matched not in _MATCHED
                and _is_prepared(builder)):
            # Built before: from this tree? (A data_dir would otherwise go on serving another.)
            check_tree()
            try:
                rafdb.check_built_from(builder, manual_dir)
            except rafdb.RafDbLayoutError as e:
                raise DataConfigError(f"config.dataset.manual_dir={manual_dir!r}: {e}") from e
            _MATCHED.add(matched)

        def build() -> Any:
            if rafdb is not None and manual_dir:
                check_tree()
                try:
                    return rafdb.build(
                        builder_config or builder.builder_config.name, manual_dir, data_dir
                    )
                except rafdb.DataDirError as e:
                    where = (f"config.dataset.{written}={folder!r}" if folder else
                             "config.dataset.data_dir=None (TFDS's default, "
                             f"{self._tfds.core.constants.DATA_DIR})")
                    raise DataConfigError(f"{where}: {e.problem}") from e
                except rafdb.RafDbLayoutError as e:
                    raise DataConfigError(
                        f"config.dataset.manual_dir={manual_dir!r} is not a usable RAF-DB tree: {e}"
                    ) from e
            if rafdb is not None:
                instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", "") or ""
                raise DataConfigError(
                    f"config.dataset.name={config.name!r} is not prepared in "
                    f"config.dataset.data_dir={data_dir!r} and config.dataset.manual_dir is "
                    "not set. RAF-DB cannot be downloaded automatically: obtain it from its "
                    "owners, unpack it and set config.dataset.manual_dir to its root "
                    f"(it is built into data_dir on first use).\n{instructions.strip()}\n"
                    + SMOKE_HINT
                )
            raise DataConfigError(
                f"config.dataset.name={config.name!r} is not prepared in "
                f"config.dataset.data_dir={data_dir!r}. This project never downloads: "
                f"prepare it first (e.g. `tfds build {config.name.split(':')[0]} "
                "--data_dir=<dir>`) and set config.dataset.data_dir to that directory."
            )

        builder = _prepared(
            builder, lambda: tfds.builder(config.name, data_dir=data_dir), build,
            key=f"{config.name} in {data_dir}",
        )
        self._builder = builder
        self._manual_dir = manual_dir if rafdb is not None else None
        features = builder.info.features
        for key in ("image_key", "label_key"):
            if config[key] not in features:
                raise DataConfigError(
                    f"config.dataset.{key}={config[key]!r} is not a feature of "
                    f"{config.name!r}. Its features are: {', '.join(sorted(features))}."
                )
        self._has_file = bool(config.file_key) and config.file_key in features
        label = features[config.label_key]
        names = tuple(getattr(label, "names", None) or ())
        if not names:
            raise DataConfigError(
                f"config.dataset.label_key={config.label_key!r} of {config.name!r} is not a "
                "ClassLabel feature; point it at the feature holding the class index."
            )
        self.info = DatasetInfo(
            name=config.name,
            num_classes=len(names),
            class_names=names,
            split_sizes={k: int(v.num_examples) for k, v in builder.info.splits.items()},
        )

    def _read(self, split: str, start: int, end: int, decoders: Any = None) -> Any:
        return self._builder.as_dataset(
            split=f"{split}[{start}:{end}]",
            shuffle_files=False,
            decoders=decoders,
            read_config=self._tfds.ReadConfig(interleave_cycle_length=1),
        )

    def examples(self, split: str, indices: np.ndarray) -> Any:
        tf = import_tf()
        cfg, has_file = self._config, self._has_file
        indices = np.asarray(indices, np.int64)
        start, end = (int(indices[0]), int(indices[-1]) + 1) if len(indices) else (0, 0)
        image_feature = self._builder.info.features[cfg.image_key]
        # Encoded images are read undecoded and decoded here, as prediction decodes them.
        encoded = (isinstance(image_feature, self._tfds.features.Image)
                   and image_feature.dtype == np.uint8)
        skip = {cfg.image_key: self._tfds.decode.SkipDecoding()}

        def convert(index, ex):
            image = ex[cfg.image_key]
            if encoded:
                image = decode_image(image)
            elif image.dtype == tf.string:  # Read undecoded (a scattered shard): decode now.
                image = image_feature.decode_example(image)
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            if has_file:
                file_name = ex[cfg.file_key]
            else:
                file_name = tf.strings.join([split, tf.strings.as_string(index)], "/")
            return {
                "image": tf.cast(image, tf.uint8),
                "label": tf.cast(ex[cfg.label_key], tf.int32),
                "file_name": file_name,
                "index": index,
            }

        if end - start == len(indices):  # Contiguous: read just that slice.
            ds = self._read(split, start, end, skip if encoded else None).enumerate(start)
        else:
            # A shard dealt across the split: skip the others' images undecoded.
            wanted = np.zeros(end, bool)
            wanted[indices] = True
            ds = self._read(split, start, end, skip).enumerate(start)
            ds = ds.filter(as_written(lambda index, _: tf.gather(wanted, index)))
        return ds.map(as_written(convert), num_parallel_calls=tf.data.AUTOTUNE)

    def labels(self, split: str) -> np.ndarray:
        decoders = {self._config.image_key: self._tfds.decode.SkipDecoding()}
        n = self.info.split_sizes[split]
        ds = self._read(split, 0, n, decoders).map(
            as_written(lambda ex: ex[self._config.label_key]))
        return np.concatenate([b for b in ds.batch(8192).as_numpy_iterator()] or [[]]).astype(
            np.int64
        )

    def find_unreadable(self, split: str, indices: np.ndarray) -> str | None:
        """Called after a decode error only: a build can hold an image TensorFlow does not
        decode (rafdb builds made before the builder decoded each JPEG with TensorFlow)."""
        tf = import_tf()
        cfg = self._config
        indices = np.asarray(indices, np.int64)
        if not len(indices):
            return None
        start, end = int(indices[0]), int(indices[-1]) + 1
        image_feature = self._builder.info.features[cfg.image_key]
        encoded = (isinstance(image_feature, self._tfds.features.Image)
                   and image_feature.dtype == np.uint8)

        def decode(index, ex):
            image = ex[cfg.image_key]
            image = decode_image(image) if encoded else image_feature.decode_example(image)
            return tf.shape(image)[0], index

        skip = {cfg.image_key: self._tfds.decode.SkipDecoding()}
        ds = self._read(split, start, end, skip).enumerate(start)
        ds = ds.map(as_written(decode), num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
        good = {int(index) for _, index in ds.as_numpy_iterator()}
        bad = next((int(i) for i in indices if int(i) not in good), None)
        if bad is None:
            return None
        name = f"{split}/{bad}"
        if self._has_file:
            (ex,) = self._read(split, bad, bad + 1, skip).take(1).as_numpy_iterator()
            name = ex[cfg.file_key].decode("utf-8", "replace")
        return f"{name} (example {bad}) of the {self.info.name} build in {self._builder.data_dir}"

    def unreadable_fix(self) -> str:
        built, cfg = self._builder.data_dir, self._config
        family, _ = _split_name(cfg.name)
        if self._manual_dir:
            return (f"Delete {built} and rerun: it is rebuilt from config.dataset.manual_dir="
                    f"{self._manual_dir!r}, and the builder names any image there to replace.")
        data_dir = os.fspath(self._builder.data_dir_root)
        if family == "rafdb":
            return (f"The build is broken (one made before the builder decoded every JPEG with "
                    f"TensorFlow can be): delete {built} and rebuild it from your RAF-DB tree, "
                    "`python -m tfds_rafdb.rafdb "
                    f"--builder_config={self._builder.builder_config.name} "
                    f"--manual_dir=/data/RAF-DB/{self._builder.builder_config.tree} "
                    f"--data_dir={data_dir}` (README, Bring RAF-DB), or rerun with "
                    "config.dataset.manual_dir set; the builder names any image to replace.")
        return (f"The build is broken: delete {built} and rebuild it "
                f"(e.g. `tfds build {cfg.name.split(':')[0]} --data_dir={data_dir}`).")

    def unreadable_files(self, split: str) -> list[str]:
        # Not decoded before every run (seconds on RAF-DB): a build's images decoded when it
        # was made; one that does not is named at its first read (find_unreadable).
        return []


# --------------------------------------------------------------------------------------------
# Image folder


def _subdirs(path: epath.Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


_EXIF_ORIENTATION = 0x0112


def exif_orientation(path: str) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored) of an image file, read from its header
    only; 1 when it has none or is not a file Pillow knows."""
    from PIL import Image, UnidentifiedImageError

    try:
        with epath.Path(path).open("rb") as f, Image.open(f) as image:
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_image(data: Any) -> Any:
    """Encoded bytes -> uint8 [H, W, 3]. A JPEG is decoded with libjpeg's accurate integer DCT,
    as OpenCV (cer_jax.predict), Pillow and torchvision decode it: TF's default, the fast DCT,
    puts pixels up to ~9 levels away from what prediction sees."""
    tf = import_tf()
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


def apply_exif_orientation(image: Any, orientation: Any) -> Any:
    """A decoded [H, W, C] image turned upright for its EXIF orientation (as Pillow's
    ImageOps.exif_transpose; tf.image.rot90 turns counter-clockwise)."""
    tf = import_tf()
    transposed = tf.transpose(image, [1, 0, 2])
    return tf.switch_case(orientation - 1, [
        lambda: image,                                 # 1: upright
        lambda: tf.image.flip_left_right(image),       # 2: mirrored
        lambda: tf.image.rot90(image, 2),              # 3: upside down
        lambda: tf.image.flip_up_down(image),          # 4: mirrored upside down
        lambda: transposed,                            # 5: transposed
        lambda: tf.image.rot90(image, 3),              # 6: to be turned 90 degrees clockwise
        lambda: tf.image.rot90(transposed, 2),         # 7: transversed
        lambda: tf.image.rot90(image, 1),              # 8: to be turned 90 degrees anticlockwise
    ])


class FolderSource:
    """A <root>/<split>/<class>/<image> tree; class names are the sorted class folder names.

    Images are whatever tf.io.decode_image reads (IMAGE_EXTENSIONS); grayscale images become RGB
    by repeating the channel, an alpha channel is dropped, and a photo's EXIF orientation is
    applied (as cer_jax.predict's decoder does, so a phone photo trains upright). Other files
    are skipped and logged. The root may be any epath (a local folder or gs://...).
    """

    def __init__(self, config: ml_collections.ConfigDict):
        root = epath.Path(_expand(config.folder)) if config.folder else None
        if root is None or not root.is_dir():
            raise DataConfigError(
                f"config.dataset.folder={config.folder!r} is not a directory. With "
                "config.dataset.name='folder', set config.dataset.folder to the root of a "
                "<split>/<class>/<image> tree."
            )
        if (root / layout.LABEL_FILE).is_file():  # was "split folder 'Annotation' holds no images"
            raise DataConfigError(
                f"config.dataset.folder={os.fspath(root)!r} is a RAF-DB tree ({layout.LABEL_FILE}"
                "), not a <split>/<class>/<image> folder: read it with "
                "--config.dataset.name=rafdb/compound (or rafdb/basic for the basic tree) "
                f"--config.dataset.manual_dir={os.fspath(root)} (README, \"Bring RAF-DB\").")
        splits = _subdirs(root)
        if not splits:
            raise DataConfigError(
                f"config.dataset.folder={os.fspath(root)!r} has no split folders; expected "
                "<split>/<class>/<image> (e.g. train/Happily Surprised/0001.jpg)."
            )
        self._files: dict[str, list[tuple[str, int]]] = {}
        classes: Sequence[str] | None = None
        for split in splits:
            split_classes = _subdirs(root / split)
            loose = [p.name for p in (root / split).iterdir()
                     if p.name.lower().endswith(IMAGE_EXTENSIONS) and not p.is_dir()]
            if loose and not split_classes:  # <class>/<image>: the split level is missing
                raise DataConfigError(
                    f"config.dataset.folder={os.fspath(root)!r}: {split}/ holds images "
                    f"({loose[0]}, ...) but no class folders; a folder dataset is "
                    "<split>/<class>/<image>. If the top-level folders are your classes, "
                    "move them into split folders (train_fit/, validation/, test/), e.g. "
                    f"train_fit/{split}/{loose[0]}."
                )
            if classes is None:
                classes, first = split_classes, split
            elif split_classes != classes:
                raise DataConfigError(
                    f"config.dataset.folder={os.fspath(root)!r}: class folders differ between "
                    f"splits {first!r} ({', '.join(classes)}) and {split!r} "
                    f"({', '.join(split_classes)}). Every split needs the same class folders "
                    "(an empty folder is fine), and every folder at the top is read as a split: "
                    "move any other out."
                )
            files, skipped = [], [f"{name} (not in a class folder)" for name in sorted(loose)]
            for label, name in enumerate(split_classes):
                for path in sorted((root / split / name).iterdir()):
                    if path.name.startswith("."):
                        continue
                    # An image's name is enough: a stat per image is a round trip on gs://
                    # (minutes per opening of a RAF-DB-sized folder, opened at each evaluation).
                    if path.name.lower().endswith(IMAGE_EXTENSIONS):
                        files.append((f"{name}/{path.name}", label))
                    elif path.is_dir():  # named, so that its images are not lost unseen
                        skipped.append(f"{name}/{path.name}/ (a folder: not read)")
                    else:
                        skipped.append(f"{name}/{path.name}")
            said = (os.fspath(root), split, len(skipped))
            if skipped and said not in _SKIPS_LOGGED:  # a run opens the folder several times
                _SKIPS_LOGGED.add(said)
                logging.warning(
                    "config.dataset.folder=%s: %d file(s) of split %r skipped (not %s): %s%s",
                    root, len(skipped), split, "/".join(IMAGE_EXTENSIONS),
                    ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "",
                )
            if not files:
                raise DataConfigError(
                    f"config.dataset.folder={os.fspath(root)!r}: split folder {split!r} holds no "
                    f"images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders."
                )
            self._files[split] = files
        if not classes:
            raise DataConfigError(
                f"config.dataset.folder={os.fspath(root)!r}: split {first!r} has no class "
                "folders."
            )
        self._root = root
        self._orientation_cache: dict[str, np.ndarray] = {}
        self.info = DatasetInfo(
            name=f"folder:{root}",
            num_classes=len(classes),
            class_names=tuple(classes),
            split_sizes={s: len(f) for s, f in self._files.items()},
            listings={s: hashlib.sha256("\n".join(n for n, _ in f).encode()).hexdigest()
                      for s, f in self._files.items()},
        )

    def _paths(self, split: str, indices: np.ndarray | None = None) -> list[str]:
        files = self._files[split]
        chosen = files if indices is None else [files[i] for i in indices]
        return [os.fspath(self._root / split / name) for name, _ in chosen]

    def examples(self, split: str, indices: np.ndarray) -> Any:
        tf = import_tf()
        indices = np.asarray(indices, np.int64)
        files = self._files[split]
        names = [files[i][0] for i in indices]
        labels = np.asarray([files[i][1] for i in indices], np.int32)

        paths = self._paths(split, indices)
        orientations = self._orientations(split)[indices]

        def load(path, label, name, index, orientation):
            image = apply_exif_orientation(decode_image(tf.io.read_file(path)), orientation)
            return {"image": image, "label": label, "file_name": name, "index": index}

        ds = tf.data.Dataset.from_tensor_slices((
            np.asarray(paths, str), labels, np.asarray(names, str), indices, orientations
        ))
        return ds.map(as_written(load), num_parallel_calls=tf.data.AUTOTUNE)

    def _orientations(self, split: str) -> np.ndarray:
        """Every image's EXIF orientation, read once per split, in parallel (a header read per
        file: on gs:// each is a round trip)."""
        if split not in self._orientation_cache:
            with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
                self._orientation_cache[split] = np.asarray(
                    list(pool.map(exif_orientation, self._paths(split))), np.int32)
        return self._orientation_cache[split]

    def labels(self, split: str) -> np.ndarray:
        return np.asarray([label for _, label in self._files[split]], np.int64)

    def find_unreadable(self, split: str, indices: np.ndarray) -> str | None:
        bad = self._undecodable(self._paths(split, indices))
        return bad[0] if bad else None

    def unreadable_fix(self) -> str:
        return "Remove or replace the file, then rerun."

    def unreadable_files(self, split: str) -> list[str]:
        return self._undecodable(self._paths(split))

    @staticmethod
    def _undecodable(paths: list[str]) -> list[str]:
        """The paths that tf.io.decode_image cannot read, decoded in parallel by tf.data."""
        tf = import_tf()

        def decode(path, index):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            return tf.shape(image)[0], index

        ds = tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths))))
        ds = ds.map(as_written(decode), num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
        good = {int(index) for _, index in ds.as_numpy_iterator()}
        return [path for index, path in enumerate(paths) if index not in good]
