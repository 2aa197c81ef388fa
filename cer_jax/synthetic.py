"""SYNTHETIC RAF-DB: procedurally drawn cartoon faces in the exact RAF-DB on-disk layout (label
file, original and aligned images, manual landmarks; not the automatic landmarks or boxes).

These are not photographs of people. The tree exists so that the whole pipeline (TFDS builder,
input pipeline, training, fusion, report) runs end to end, in CI and in demos, without the real
RAF-DB, which is released only on request. Numbers measured on it say nothing about real faces.

Each basic emotion is a set of facial-action changes (brows, eyelids, cheeks, nose, mouth) with
a per-image intensity; a compound class blends the actions of its two emotions, so classes that
share an emotion look alike. Identity, skin tone, pose, scale, lighting, background and noise
vary per image. Output is byte-identical for the same arguments: every image draws from its own
RNG seeded by (seed, split, index), JPEG quality is fixed and nothing time-dependent is written.

RAF-DB's classes, file names and split ids come from the TFDS builder's `layout` module, so the
generator writes exactly what the builder reads.

    python -m cer_jax.synthetic --out=/tmp/rafdb_synth/compound --kind=compound
    python -m cer_jax.synthetic --preview=docs/synthetic_faces.png
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
from absl import flags
from etils import epy

# Imported on first use: loading a config (cer_jax.data.config reads this module's defaults)
# must not need OpenCV or Pillow, which a bare accelerator host running the benchmark lacks.
with epy.lazy_imports():
    import cv2
    from PIL import Image, ImageDraw

from cer_jax import cli, paths
from cer_jax.errors import UserError
from tfds_rafdb import layout

# Bumped whenever the drawing changes, so caches keyed on it never serve an older tree.
VERSION = 1
JPEG_QUALITY = 92
# Default tree size (train, test) of the CLI, the demo and config keys
# dataset.synthetic_num_train_images / dataset.synthetic_num_test_images.
NUM_TRAIN_IMAGES = 3000
NUM_TEST_IMAGES = 300

# The actions every emotion is made of; values are intensities in [0, 1] at full expression.
ACTIONS = (
    "brow_raise",
    "inner_brow_raise",
    "brow_lower",
    "eye_widen",
    "lid_tighten",
    "cheek_raise",
    "nose_wrinkle",
    "upper_lip_raise",
    "corner_up",
    "corner_down",
    "mouth_open",
    "lip_stretch",
    "lip_press",
)
EMOTION_ACTIONS: dict[str, dict[str, float]] = {
    "surprise": {"brow_raise": 1.0, "eye_widen": 0.8, "mouth_open": 0.9},
    "fear": {
        "brow_raise": 0.5,
        "inner_brow_raise": 0.7,
        "brow_lower": 0.3,
        "eye_widen": 1.0,
        "lip_stretch": 0.9,
        "mouth_open": 0.35,
    },
    "disgust": {
        "nose_wrinkle": 1.0,
        "upper_lip_raise": 0.9,
        "brow_lower": 0.5,
        "lid_tighten": 0.4,
        "corner_down": 0.3,
    },
    "happiness": {"corner_up": 1.0, "cheek_raise": 0.8, "mouth_open": 0.3, "lid_tighten": 0.2},
    "sadness": {"inner_brow_raise": 1.0, "corner_down": 0.9, "lid_tighten": 0.3, "lip_press": 0.3},
    "anger": {"brow_lower": 1.0, "lid_tighten": 0.6, "eye_widen": 0.3, "lip_press": 0.9},
    "neutral": {},
}

# The emotion a word of a RAF-DB class name names, by its stem: "Sadly Fearful" is sadness + fear.
_EMOTION_STEMS = {
    "happ": "happiness",
    "sad": "sadness",
    "fear": "fear",
    "ang": "anger",
    "disgust": "disgust",
    "surpris": "surprise",
    "neutral": "neutral",
}


def class_emotions(class_name: str) -> tuple[str, ...]:
    """The basic emotions a RAF-DB class blends, in the order its name gives them."""
    words = class_name.lower().split()
    emotions = tuple(e for w in words for s, e in _EMOTION_STEMS.items() if w.startswith(s))
    if len(emotions) != len(words):
        raise ValueError(f"No drawing for RAF-DB class {class_name!r}.")
    return emotions


# Per tree, (class name, emotions) by RAF-DB label id - 1.
CLASSES = {
    tree: tuple((name, class_emotions(name)) for name in names)
    for tree, names in layout.TREE_CLASSES.items()
}
# Image counts per label id in the real RAF-DB (train + test); only their ratios are used.
RAFDB_COUNTS = {
    "compound": (697, 266, 129, 163, 86, 738, 150, 560, 176, 841, 148),
    "basic": (1619, 355, 877, 5957, 2460, 867, 3204),
}
_SPLIT_CODES = {"train": 1, "test": 2}
_SKIN_TONES = np.array(
    [
        [255, 224, 196],
        [241, 194, 167],
        [224, 172, 138],
        [198, 134, 102],
        [161, 102, 76],
        [120, 74, 52],
        [90, 56, 40],
    ],
    dtype=np.float64,
)  # RGB, light to dark
_HAIR_COLOURS = np.array(
    [[30, 24, 20], [70, 45, 30], [120, 80, 45], [180, 140, 90], [200, 190, 170], [110, 40, 25]],
    dtype=np.float64,
)
_README = """\
SYNTHETIC RAF-DB-LAYOUT TREE - NOT REAL FACES, NOT RAF-DB.

Written by `python -m cer_jax.synthetic` (cer_jax, generator version {version}) with
kind={kind}, seed={seed}, {num_train} train and {num_test} test images. Cartoon faces are drawn
procedurally; each class is a blend of facial actions. Use it to exercise the pipeline only;
results on it say nothing about expression recognition on real faces. The layout mirrors RAF-DB
so the same TFDS builder reads it:
  {files}
"""
_FOLDERS = (layout.ORIGINAL_DIR, layout.ALIGNED_DIR, layout.MANUAL_ANNOTATION_DIR)
# Marks a tree as this generator's: only such a tree (or an empty folder) is written into.
MARKER_FILE = "SYNTHETIC_README.txt"


@dataclasses.dataclass(frozen=True)
class TreeSummary:
    """What `write_tree` wrote: counts are per RAF-DB label id (index 0 holds id 1)."""

    out_dir: pathlib.Path
    kind: str
    class_names: tuple[str, ...]
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]

    @property
    def num_train_images(self) -> int:
        return sum(self.train_counts)

    @property
    def num_test_images(self) -> int:
        return sum(self.test_counts)


class SyntheticSizeError(UserError):
    """Image counts that no RAF-DB-like tree can have."""


def check_seed(seed: int, key: str = "--seed") -> None:
    """numpy seeds its generators from integers >= 0 only: a negative seed was its traceback
    at the first image."""
    if seed < 0:
        raise SyntheticSizeError(f"{key}={seed}: give a seed >= 0.")


# The command lines' names of check_sizes' values (this module's and the demo's): a message
# without them ("0 images cannot give ...") did not say which of the two counts was wrong.
FLAG_KEYS = {"train": "--num_train_images", "test": "--num_test_images", "seed": "--seed"}


def check_sizes(kind: str, num_train_images: int, num_test_images: int, seed: int = 0,
                keys: Mapping[str, str] | None = None) -> dict[str, tuple[int, ...]]:
    """The per-class image counts of each split, or SyntheticSizeError before anything is drawn:
    every class needs 2 train images (train_fit and validation) and 1 test image, and the ids
    must fit RAF-DB's digits. `keys` ("train", "test", "seed": the config keys the values come
    from, e.g. FLAG_KEYS) start each message; without them a size's message stands alone."""
    if kind not in CLASSES:
        raise SyntheticSizeError(f"kind must be one of {sorted(CLASSES)}, got {kind!r}.")
    keys = keys or {}
    check_seed(seed, keys.get("seed", "--seed"))
    sizes = {"train": num_train_images, "test": num_test_images}
    counts = {}
    for (split, count), minimum in zip(sizes.items(), (2, 1), strict=True):
        prefix = f"{keys[split]}={count}: " if split in keys else ""
        digits = layout.DIGITS[kind][split]
        if count >= 10**digits:
            raise SyntheticSizeError(
                f"{prefix}{count} {split} images do not fit RAF-DB's {digits}-digit {kind} "
                f"{split} ids (the TFDS builder checks them): ask for at most {10**digits - 1}."
            )
        try:
            counts[split] = class_counts(kind, count, minimum=minimum)
        except SyntheticSizeError as e:
            raise SyntheticSizeError(f"{prefix}{e}") from None
    return counts


class OutputPathError(UserError):
    """An output path that cannot be written, or must not be: it holds other data."""


def check_folder(flag: str, value: str | pathlib.Path) -> None:
    """Before any work: no file stands where the folder `value` or one of its parents should
    be (it is made later); and it is a local folder, which is all this writes."""
    if paths.is_remote(value):
        raise OutputPathError(f"--{flag}={value}: give a local folder (this writes on this "
                              "machine only; copy the folder to the bucket afterwards).")
    blocker = paths.file_in_the_way(value)
    if blocker is not None:
        raise OutputPathError(f"--{flag}={value}: {blocker} is a file, not a folder; give "
                              f"--{flag} a folder path.")


def is_synthetic_tree(root: str | pathlib.Path) -> bool:
    """Whether `root` holds this generator's marker (written before anything else)."""
    marker = pathlib.Path(root) / MARKER_FILE
    return marker.is_file() and marker.read_text().startswith(_README.splitlines()[0])


def check_out_dir(out_dir: str | pathlib.Path) -> None:
    """Before anything is drawn: `out_dir` is new, empty or an earlier synthetic tree. The tree
    has RAF-DB's file names, so writing into a real RAF-DB folder would replace its data."""
    check_folder("out", out_dir)
    root = pathlib.Path(out_dir)
    if root.is_dir() and any(root.iterdir()) and not is_synthetic_tree(root):
        raise OutputPathError(
            f"--out={out_dir} is a folder with other files (no {MARKER_FILE}: not a synthetic "
            "tree); the drawing would overwrite files of the same names, e.g. a real RAF-DB "
            "tree's. Give a new or empty folder.")


def make_out_dir(out_dir: str | pathlib.Path, flag: str = "out") -> None:
    """Before any drawing (the command lines'): `out_dir` is made and a file can be created in
    it; else one line naming the flag, not an OSError's traceback after a preview was drawn."""
    try:
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise cannot_write(flag, out_dir, e) from e


def cannot_write(flag: str, value: str | pathlib.Path, error: OSError) -> OutputPathError:
    return OutputPathError(f"--{flag}={value}: cannot write there ({paths.error_reason(error)});"
                           " give a folder you can write.")


def check_preview_path(path: str | pathlib.Path, out_dir: str | None = None) -> None:
    """Before anything is drawn: `path` is a .png file name in an existing folder, or in
    `out_dir`, which the tree's drawing makes first."""
    path = pathlib.Path(path)
    if path.suffix.lower() != ".png":
        raise OutputPathError(f"--preview={path} must end in .png (the grid is saved as PNG).")
    if path.is_dir():
        raise OutputPathError(f"--preview={path} is a folder; give a file path, e.g. "
                              f"{path / 'synthetic_faces.png'}.")
    in_out = out_dir is not None and os.path.abspath(path.parent) == os.path.abspath(out_dir)
    if not path.parent.is_dir() and not in_out:
        what = "is a file" if path.parent.exists() else "does not exist"
        raise OutputPathError(f"--preview={path}: the folder {path.parent} {what}; give a path "
                              "in an existing folder.")


def class_counts(kind: str, total: int, minimum: int) -> tuple[int, ...]:
    """Splits `total` over the classes in RAF-DB's proportions, at least `minimum` each.

    Largest-remainder rounding keeps the counts ordered like RAF-DB's (a more frequent class
    never gets fewer images) and summing exactly to `total`.
    """
    weights = np.asarray(RAFDB_COUNTS[kind], dtype=np.float64)
    num_classes = len(weights)
    if total < minimum * num_classes:
        raise SyntheticSizeError(
            f"{total} images cannot give each of the {num_classes} {kind} classes at least "
            f"{minimum}: ask for at least {minimum * num_classes}."
        )
    share = (total - minimum * num_classes) * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    remainders = share - counts
    for i in np.argsort(-remainders, kind="stable")[: total - minimum * num_classes - counts.sum()]:
        counts[i] += 1
    return tuple(int(c) + minimum for c in counts)


def _face_actions(emotions: Sequence[str], rng: np.random.Generator) -> dict[str, float]:
    """Blends the emotions' actions with random weights, intensity and per-action jitter."""
    intensity = rng.uniform(0.45, 1.0)
    actions = dict.fromkeys(ACTIONS, 0.0)
    for emotion in emotions:
        weight = rng.uniform(0.6, 1.0) if len(emotions) > 1 else 1.0
        for name, value in EMOTION_ACTIONS[emotion].items():
            actions[name] = max(actions[name], weight * value)
    return {
        k: float(np.clip(intensity * v + rng.normal(0.0, 0.12), 0.0, 1.0))
        for k, v in actions.items()
    }


def _ellipse(cx: float, cy: float, ax: float, ay: float, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], axis=1)


def _quad_curve(p0, p1, p2, n: int = 12) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 pulled towards p1."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


class _Canvas:
    """Draws shapes given in face coordinates (face half-width = 1, y down) onto an image."""

    _SHIFT = 4  # sub-pixel bits for OpenCV's anti-aliased drawing

    def __init__(self, image: np.ndarray, transform: np.ndarray):
        self.image = image
        self.transform = transform  # 2x3, face coordinates -> pixels

    def _pixels(self, points: np.ndarray) -> np.ndarray:
        pts = points @ self.transform[:, :2].T + self.transform[:, 2]
        return np.round(pts * (1 << self._SHIFT)).astype(np.int32)

    def fill(self, points: np.ndarray, colour) -> None:
        cv2.fillPoly(self.image, [self._pixels(points)], _bgr(colour), cv2.LINE_AA, self._SHIFT)

    def line(self, points: np.ndarray, colour, width_units: float) -> None:
        scale = float(np.hypot(*self.transform[:, 0]))
        width = max(1, int(round(width_units * scale)))
        cv2.polylines(
            self.image, [self._pixels(points)], False, _bgr(colour), width, cv2.LINE_AA, self._SHIFT
        )


def _bgr(colour) -> tuple[float, float, float]:
    r, g, b = colour
    return (float(b), float(g), float(r))


def _draw_face(canvas: _Canvas, identity: dict, a: dict[str, float], yaw: float) -> np.ndarray:
    """Draws one face; returns the 5 landmarks (eyes, nose tip, mouth corners) in face coords."""
    skin, hair = identity["skin"], identity["hair"]
    fw, fh = identity["face_w"], identity["face_h"]
    dark = skin * 0.55
    # Hair behind the head, ears, head.
    canvas.fill(_ellipse(0.0, -0.25 * fh, fw * 1.12, fh * 0.95 * identity["hair_len"]), hair)
    for side in (-1, 1):
        canvas.fill(_ellipse(side * fw * 0.97 + yaw * 0.3, 0.0, 0.14, 0.24), skin * 0.92)
    canvas.fill(_ellipse(yaw * 0.15, 0.0, fw, fh), skin)
    canvas.fill(_ellipse(yaw * 0.15, -fh * 0.78, fw * 0.85, fh * 0.3), hair)  # fringe

    ex, ey = identity["eye_dx"], identity["eye_y"]
    eye_w = identity["eye_w"]
    opening = (
        eye_w
        * (0.48 + 0.35 * a["eye_widen"] - 0.3 * a["lid_tighten"] - 0.2 * a["cheek_raise"])
        * identity["eye_open"]
    )
    brow_y = ey - 0.22 - 0.14 * a["brow_raise"] + 0.1 * a["brow_lower"] + identity["brow_dy"]
    inner_dy = -0.14 * a["inner_brow_raise"] + 0.1 * a["brow_lower"]
    inner_dx = -0.05 * a["brow_lower"]
    landmarks = []
    for side in (-1, 1):  # image-left eye first
        cx = side * ex + yaw * 0.35
        # Eye white, iris, pupil, then the upper lid's line; its height is the eye opening.
        canvas.fill(_ellipse(cx, ey, eye_w, max(opening, 0.015)), (245, 245, 240))
        iris_r = min(eye_w * 0.55, max(opening, 0.02))
        canvas.fill(_ellipse(cx + yaw * 0.08, ey, iris_r, iris_r, 20), identity["iris"])
        canvas.fill(_ellipse(cx + yaw * 0.08, ey, iris_r * 0.45, iris_r * 0.45, 16), (15, 15, 15))
        upper = _quad_curve((cx - eye_w, ey), (cx, ey - 2.1 * opening), (cx + eye_w, ey))
        canvas.line(upper, dark * 0.6, 0.035)
        if a["cheek_raise"] > 0.15:  # lower lid pushed up by the cheek
            lower = _quad_curve((cx - eye_w, ey + 0.02), (cx, ey - 0.02), (cx + eye_w, ey + 0.02))
            canvas.line(lower, dark, 0.02 + 0.03 * a["cheek_raise"])
            canvas.fill(_ellipse(cx + side * 0.1, ey + 0.38, 0.17, 0.1), skin * (1.0, 0.86, 0.86))
        # Brow: inner end near the nose, outer end at the temple.
        inner = (cx - side * (eye_w * 0.9 + inner_dx), brow_y + inner_dy)
        outer = (cx + side * eye_w * 1.25, brow_y + 0.04 - 0.03 * a["brow_raise"])
        mid = ((inner[0] + outer[0]) / 2, min(inner[1], outer[1]) - identity["brow_arch"])
        canvas.line(_quad_curve(inner, mid, outer), hair * 0.8, identity["brow_w"])
        landmarks.append((cx, ey))

    # Nose: bridge, tip and nostrils; disgust wrinkles the bridge.
    nx = yaw * 0.45
    tip_y = identity["nose_y"] - 0.03 * a["nose_wrinkle"]
    canvas.line(
        _quad_curve((nx - 0.05, ey + 0.05), (nx - 0.1, tip_y - 0.15), (nx, tip_y)), dark, 0.03
    )
    flare = 0.1 + 0.05 * a["nose_wrinkle"]
    canvas.line(
        _quad_curve((nx - flare, tip_y - 0.03), (nx, tip_y + 0.07), (nx + flare, tip_y - 0.03)),
        dark,
        0.03,
    )
    if a["nose_wrinkle"] > 0.15:
        for k in range(3):
            y = ey + 0.02 + 0.05 * k
            canvas.line(
                np.array([[nx - 0.08, y + 0.02], [nx, y], [nx + 0.08, y + 0.02]]),
                dark,
                0.012 + 0.018 * a["nose_wrinkle"],
            )
    landmarks.append((nx, tip_y))

    # Mouth: corners move up/down/out; lips open, press or raise.
    mx, my = yaw * 0.4, identity["mouth_y"]
    half = identity["mouth_w"] * (
        1.0 + 0.3 * a["lip_stretch"] + 0.12 * a["corner_up"] - 0.15 * a["lip_press"]
    )
    corner_y = my + identity["mouth_curve"] - 0.13 * a["corner_up"] + 0.12 * a["corner_down"]
    open_ = 0.3 * a["mouth_open"]
    lip = identity["lip"] * (1.0 - 0.4 * a["lip_press"])
    upper_top = my - lip - 0.1 * a["upper_lip_raise"]
    lower_bottom = my + open_ + lip * 1.3
    left, right = (mx - half, corner_y), (mx + half, corner_y)
    upper_outer = _quad_curve(left, (mx, 2 * upper_top - corner_y), right)
    lower_outer = _quad_curve(right, (mx, 2 * lower_bottom - corner_y), left)
    lip_colour = skin * (0.8, 0.55, 0.55)
    canvas.fill(np.concatenate([upper_outer, lower_outer]), lip_colour)
    if open_ > 0.03:
        gap_top = _quad_curve(left, (mx, 2 * (my - 0.3 * lip) - corner_y), right)
        gap_bottom = _quad_curve(right, (mx, 2 * (my + open_ - 0.3 * lip) - corner_y), left)
        canvas.fill(np.concatenate([gap_top, gap_bottom]), (60, 20, 25))
        teeth_bottom = _quad_curve(right, (mx, 2 * (my + 0.35 * open_) - corner_y), left)
        canvas.fill(np.concatenate([gap_top, teeth_bottom]), (240, 238, 230))
    else:
        seam = _quad_curve(left, (mx, 2 * my - corner_y), right)
        canvas.line(seam, lip_colour * 0.55, 0.025 + 0.02 * a["lip_press"])
    landmarks.extend([left, right])
    return np.asarray(landmarks, dtype=np.float64)


def _identity(rng: np.random.Generator) -> dict:
    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(np.floor(tone))
    skin = _SKIN_TONES[low] + (tone - low) * (_SKIN_TONES[min(low + 1, 6)] - _SKIN_TONES[low])
    return {
        "skin": skin * rng.uniform(0.95, 1.05, 3).clip(0, 255 / np.maximum(skin, 1)),
        "hair": _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.8, 1.2),
        "iris": rng.choice([[60, 40, 25], [90, 60, 30], [70, 110, 150], [80, 110, 70]]),
        "face_w": rng.uniform(0.92, 1.08),
        "face_h": rng.uniform(1.2, 1.45),
        "hair_len": rng.uniform(0.75, 1.15),
        "eye_dx": rng.uniform(0.34, 0.44),
        "eye_y": rng.uniform(-0.25, -0.1),
        "eye_w": rng.uniform(0.13, 0.18),
        "eye_open": rng.uniform(0.8, 1.2),
        "brow_dy": rng.uniform(-0.05, 0.05),
        "brow_arch": rng.uniform(0.0, 0.06),
        "brow_w": rng.uniform(0.035, 0.07),
        "nose_y": rng.uniform(0.2, 0.32),
        "mouth_y": rng.uniform(0.58, 0.72),
        "mouth_w": rng.uniform(0.24, 0.34),
        "mouth_curve": rng.uniform(-0.03, 0.03),
        "lip": rng.uniform(0.035, 0.06),
    }


def _ramp(height: int, width: int, angle: float) -> np.ndarray:
    """A linear gradient along `angle`: cos(angle) x + sin(angle) y, x and y in [-0.5, 0.5)."""
    xs = (np.arange(width, dtype=np.float32) / width - 0.5) * np.float32(np.cos(angle))
    ys = (np.arange(height, dtype=np.float32) / height - 0.5) * np.float32(np.sin(angle))
    return ys[:, None] + xs[None, :]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Vertical/horizontal colour gradient with a few soft blobs of clutter (BGR uint8)."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = _ramp(height, width, angle)[..., None] + 0.5
    image = np.clip(c0 + t * (c1 - c0), 0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 4)):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        axes = (int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2)))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.ellipse(
            image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA
        )
    return image


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def render_face(
    emotions: Sequence[str], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one synthetic photo; returns (original RGB, aligned 100x100 RGB, 5x2 landmarks).

    Landmarks are in the original image's pixel coordinates, as RAF-DB gives them.
    """
    actions = _face_actions(emotions, rng)
    identity = _identity(rng)
    width, height = (int(v) for v in rng.integers(160, 241, 2))
    scale = rng.uniform(0.16, 0.24) * min(width, height)
    margin = 1.7 * identity["face_h"] * scale / 1.3
    cx = rng.uniform(min(margin, width / 2), max(width - margin, width / 2))
    cy = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
    to_original = _similarity(scale, rng.uniform(-0.25, 0.25), cx, cy)

    image = _background(rng, height, width)
    canvas = _Canvas(image, to_original)
    landmarks_face = _draw_face(canvas, identity, actions, yaw=rng.uniform(-0.2, 0.2))

    # Lighting from one side, sensor noise, slight blur: applied to the whole photo.
    ramp = _ramp(height, width, rng.uniform(0, 2 * np.pi))
    gain = rng.uniform(0.85, 1.1) + rng.uniform(0.0, 0.5) * ramp
    photo = image.astype(np.float32) * gain[..., None]
    photo += rng.uniform(1.0, 7.0) * rng.standard_normal(photo.shape, dtype=np.float32)
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        photo = cv2.GaussianBlur(photo, (3, 3), 0)

    # Aligned crop: the face frame mapped to the centre of 100x100, with the small errors a
    # landmark-based aligner makes.
    aligned_scale = rng.uniform(31.0, 35.0) * 1.3 / identity["face_h"]
    to_aligned = _similarity(
        aligned_scale, rng.uniform(-0.05, 0.05), 50 + rng.normal(0, 1.5), 52 + rng.normal(0, 1.5)
    )
    original_to_aligned = to_aligned @ np.vstack(
        [cv2.invertAffineTransform(to_original), [0, 0, 1]]
    )
    aligned = cv2.warpAffine(
        photo,
        original_to_aligned,
        (layout.IMAGE_SIZE, layout.IMAGE_SIZE),
        flags=cv2.INTER_AREA,
        borderMode=cv2.BORDER_REFLECT,
    )
    landmarks = landmarks_face @ to_original[:, :2].T + to_original[:, 2]
    return photo[..., ::-1], aligned[..., ::-1], landmarks


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "OpenCV failed to encode a JPEG"
    return encoded.tobytes()


def _manual_annotation(landmarks: np.ndarray, rng: np.random.Generator) -> str:
    """RAF-DB's manual file: 5 landmark lines, then gender, race and age-group lines."""
    lines = [f"{x:.2f}\t{y:.2f}" for x, y in landmarks]
    lines += [str(rng.integers(0, 3)), str(rng.integers(0, 3)), str(rng.integers(0, 5))]
    return "\n".join(lines) + "\n"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One image's RNG: depends only on (seed, split, index), so any order gives equal bytes."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _shuffled_labels(counts: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    labels = np.repeat(np.arange(1, len(counts) + 1), counts)
    return labels[rng.permutation(len(labels))]


def write_tree(
    out_dir: str | pathlib.Path,
    kind: str = "compound",
    num_train_images: int = NUM_TRAIN_IMAGES,
    num_test_images: int = NUM_TEST_IMAGES,
    seed: int = 0,
) -> TreeSummary:
    """Writes a synthetic tree with RAF-DB's layout, names and class imbalance into `out_dir`.

    `out_dir` plays the role of RAF-DB's `basic/` or `compound/` folder: pass it to the TFDS
    builder as `--manual_dir`. `out_dir` must be new, empty or an earlier synthetic tree, whose
    label file and image / annotation folders are replaced (OutputPathError otherwise, before
    anything is written). The marker
    file is written first, so an interrupted run can be redrawn; the label file is removed
    first and written last, so such a run leaves a tree that the builder rejects rather than a
    partial one that it would read.
    """
    counts = check_sizes(kind, num_train_images, num_test_images, seed)
    check_out_dir(out_dir)
    root = pathlib.Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    earlier = is_synthetic_tree(root)
    (root / MARKER_FILE).write_text(
        _README.format(
            version=VERSION,
            kind=kind,
            seed=seed,
            num_train=num_train_images,
            num_test=num_test_images,
            files=", ".join([layout.LABEL_FILE, *(f"{folder}/" for folder in _FOLDERS)]),
        )
    )
    (root / layout.LABEL_FILE).unlink(missing_ok=True)
    if earlier:  # a larger earlier tree's images beyond this one's ids would stay beside it
        for folder in _FOLDERS:
            shutil.rmtree(root / folder, ignore_errors=True)
    for sub in (pathlib.Path(layout.LABEL_FILE).parent, *_FOLDERS):
        (root / sub).mkdir(parents=True, exist_ok=True)

    label_lines = []
    for split in layout.SPLITS:
        labels = _shuffled_labels(counts[split], np.random.default_rng([seed, _SPLIT_CODES[split]]))
        for index, label in enumerate(labels, start=1):
            name = layout.image_name(kind, split, index)
            stem = layout.stem(name)
            rng = image_rng(seed, split, index)
            original, aligned, landmarks = render_face(CLASSES[kind][label - 1][1], rng)
            (root / layout.ORIGINAL_DIR / name).write_bytes(_jpeg(original))
            (root / layout.ALIGNED_DIR / f"{stem}{layout.ALIGNED_SUFFIX}").write_bytes(
                _jpeg(aligned)
            )
            (root / layout.MANUAL_ANNOTATION_DIR / f"{stem}{layout.ANNOTATION_SUFFIX}").write_text(
                _manual_annotation(landmarks, rng)
            )
            label_lines.append(f"{name} {label}\n")
    (root / layout.LABEL_FILE).write_text("".join(label_lines))
    return TreeSummary(
        out_dir=root,
        kind=kind,
        class_names=tuple(name for name, _ in CLASSES[kind]),
        train_counts=counts["train"],
        test_counts=counts["test"],
    )


def preview(path: str | pathlib.Path, kind: str = "compound", per_class: int = 6, seed: int = 0):
    """Saves a PNG grid of aligned synthetic faces, one row per class, labelled."""
    classes = CLASSES[kind]
    label_w, cell = 150, layout.IMAGE_SIZE + 4
    sheet = Image.new("RGB", (label_w + per_class * cell, len(classes) * cell + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (4, 4), f"SYNTHETIC faces (cer_jax.synthetic, kind={kind}) - not real people", fill="black"
    )
    for row, (name, emotions) in enumerate(classes):
        y = 24 + row * cell
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        for col in range(per_class):
            _, aligned, _ = render_face(emotions, image_rng(seed, "train", 1000 * row + col))
            sheet.paste(Image.fromarray(aligned), (label_w + col * cell, y + 2))
    # A 256-colour palette keeps the PNG small enough for the README; the faces are flat-shaded.
    sheet.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    values = flags.FLAGS
    if not values.out and not values.preview:
        raise cli.UsageError("Give --out=DIR (and/or --preview=PNG).")
    # Every check before any drawing: a bad --out must not come after the preview's work.
    if values.preview:
        check_preview_path(values.preview, out_dir=values.out)
        check_seed(values.seed)
    if values.out:
        check_sizes(values.kind, values.num_train_images, values.num_test_images, values.seed,
                    keys=FLAG_KEYS)
        check_out_dir(values.out)
        make_out_dir(values.out)
    # The tree first: a preview saved in --out first made it "a folder with other files".
    if values.out:
        try:
            summary = write_tree(
                values.out,
                kind=values.kind,
                num_train_images=values.num_train_images,
                num_test_images=values.num_test_images,
                seed=values.seed,
            )
        except OSError as e:  # a full disk, say: the label file, written last, is not there
            raise cannot_write("out", values.out, e) from e
        print(
            f"Wrote a SYNTHETIC {summary.kind} tree (drawn faces, not RAF-DB) to {summary.out_dir}"
        )
        print(f"  {summary.num_train_images} train / {summary.num_test_images} test images")
        for name, n_train, n_test in zip(
            summary.class_names, summary.train_counts, summary.test_counts, strict=True
        ):
            print(f"  {name:<24s} train {n_train:5d}  test {n_test:4d}")
    if values.preview:
        try:
            preview(values.preview, kind=values.kind, seed=values.seed)
        except OSError as e:  # a full disk, say
            raise cannot_write("preview", values.preview, e) from e
        print(f"Wrote a preview of SYNTHETIC faces to {values.preview}")


def define_flags() -> None:
    """The command line's flags; defined only when run as a program, so that importing this
    module adds no flags to another program's command line."""
    cli.define_path_flag("out", None, "Tree root to write (becomes the builder's --manual_dir).")
    flags.DEFINE_enum("kind", "compound", sorted(CLASSES), "Which RAF-DB tree to imitate.")
    flags.DEFINE_integer("num_train_images", NUM_TRAIN_IMAGES, "Train images to draw.")
    flags.DEFINE_integer("num_test_images", NUM_TEST_IMAGES, "Test images to draw.")
    flags.DEFINE_integer("seed", 0, "Same seed and sizes, same bytes.")
    cli.define_path_flag("preview", None, "Also save a PNG grid of faces per class here.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
