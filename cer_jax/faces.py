"""Faces: a pluggable detector, and RAF-DB-style alignment of each face to 100x100.

Detectors are callables `detector(image_rgb_uint8) -> list[Face]`; a `Face` has a box and, if
the detector finds them, 5 landmarks (eye centres, nose tip, mouth corners, image-left first).
`load_detector(spec)` builds one from a command-line string:

    haar                OpenCV's frontal-face Haar cascade (`haarcascade_frontalface_default.xml`,
                        shipped in `cv2.data.haarcascades` by opencv-python(-headless) 4.x; the
                        5.x wheels dropped the cascades and `cv2.CascadeClassifier`)
    yunet:MODEL.onnx    OpenCV's YuNet (`cv2.FaceDetectorYN`, OpenCV >= 4.8) with a model file
                        you bring (face_detection_yunet_2023mar.onnx; local or gs://); it also
                        gives landmarks
    package.module:attr your own: attr is a detector (image -> list of `Face`), or a class
                        or function of no arguments that returns one; what it returns is
                        checked (`CheckedDetector`)

Alignment (`align_face`). RAF-DB's aligned images are 100x100 crops in which a similarity
transform puts the 5 landmarks at fixed places. The template used here (`RAFDB_TEMPLATE`,
pixels in the 100x100 crop) is: eyes (32.5, 42.0) and (67.5, 42.0), nose tip (50.0, 60.0),
mouth corners (36.0, 77.0) and (64.0, 77.0): inter-ocular distance 35 % of the side, eyes 42 %
and the mouth 77 % down. These are estimates from the appearance of RAF-DB aligned faces (RAF-DB
is not on the development machine); with the dataset at hand, re-measure them by mapping each
image's manual landmarks through its alignment. A face with landmarks is mapped onto the template
by the least-squares similarity (rotation included); a face with a box only gets landmarks
estimated from the box (`HAAR_BOX_LANDMARKS`, fractions of the box: eyes at (0.30, 0.38) and
(0.70, 0.38), nose (0.50, 0.58), mouth corners (0.35, 0.78) and (0.65, 0.78); the eye positions
were measured with OpenCV's eye cascade inside the frontal-face boxes of the astronaut and
Grace Hopper photographs: eye height 0.37-0.39, inter-ocular 0.34-0.47 of the box width), which
makes the crop an upright square about 1.14x the Haar box, shifted up a little. Pixels beyond the
photo repeat its border. A large face is warped at up to 32x the crop's side and area-averaged:
its crop is that of the same photo made smaller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import cv2
import numpy as np
from etils import epath

from cer_jax.paths import is_remote
from tfds_rafdb import layout

ALIGNED_SIZE = layout.IMAGE_SIZE  # RAF-DB's aligned faces; RAFDB_TEMPLATE is in this frame
RAFDB_TEMPLATE = np.array(
    [[32.5, 42.0], [67.5, 42.0], [50.0, 60.0], [36.0, 77.0], [64.0, 77.0]], np.float64
)
# align_face's largest warp is this many times the crop's side (32: 3200 x 3200 pixels, 30 MB).
MAX_SUPERSAMPLING = 32
HAAR_BOX_LANDMARKS = np.array(
    [[0.30, 0.38], [0.70, 0.38], [0.50, 0.58], [0.35, 0.78], [0.65, 0.78]], np.float64
)


class DetectorError(ValueError):
    """A detector that cannot be built (missing OpenCV feature or model file, bad spec)."""


@dataclasses.dataclass(frozen=True)
class Face:
    """One detection in image pixels: box (x, y, w, h), score, optional 5x2 landmarks."""

    box: tuple[float, float, float, float]
    score: float = 1.0
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


class Detector(Protocol):
    def __call__(self, image: np.ndarray) -> list[Face]: ...


def _downscaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The image shrunk so that its longer side is at most max_side, and the factor used."""
    scale = min(1.0, max_side / max(image.shape[:2])) if max_side else 1.0
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, scale


def haar_available() -> bool:
    cascade = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                           "haarcascade_frontalface_default.xml")
    return hasattr(cv2, "CascadeClassifier") and os.path.isfile(cascade)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade on the histogram-equalised grey image.

    Detection runs on the image shrunk to `max_side` pixels (speed); faces smaller than
    `min_size` of the shorter side are ignored.
    """

    def __init__(self, *, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: float = 0.05, max_side: int = 640):
        if not haar_available():
            raise DetectorError(
                f"OpenCV {cv2.__version__} has no Haar cascades (cv2.CascadeClassifier and "
                "cv2.data.haarcascades went away in OpenCV 5): install "
                "'opencv-python-headless>=4.10,<5', or pass --detector=yunet:MODEL.onnx."
            )
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        self._cascade = cv2.CascadeClassifier(path)
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_size, self.max_side = min_size, max_side

    def __call__(self, image: np.ndarray) -> list[Face]:
        small, scale = _downscaled(image, self.max_side)
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        side = max(20, round(min(grey.shape) * self.min_size))
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey, self.scale_factor, self.min_neighbors, minSize=(side, side),
            outputRejectLevels=True,
        )
        weights = np.asarray(weights, np.float64).reshape(-1)
        return [
            Face(tuple(float(v) / scale for v in box), float(weights[i]) if i < len(weights)
                 else 1.0)
            for i, box in enumerate(np.asarray(boxes).reshape(-1, 4))
        ]


@contextlib.contextmanager
def _local_file(path: str) -> Iterator[str]:
    """A local copy of the file `path` for OpenCV, which reads local files only: itself (`~`
    expanded), or for a remote one (gs://..., read through epath) a temporary copy, removed
    afterwards. FileNotFoundError when it is not a file."""
    if not is_remote(path):
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        yield path
        return
    remote = epath.Path(path)
    if not remote.is_file():
        raise FileNotFoundError(path)
    handle, local = tempfile.mkstemp(prefix="cer_jax_detector_", suffix=remote.suffix)
    try:
        with os.fdopen(handle, "wb") as target:
            target.write(remote.read_bytes())
        yield local
    finally:
        os.remove(local)


class YuNetDetector:
    """OpenCV's YuNet CNN detector (`cv2.FaceDetectorYN`) with a model file; gives landmarks.

    YuNet's landmark order is right eye, left eye (the person's), nose, right and left mouth
    corner, i.e. image-left first, as RAF-DB's.
    """

    def __init__(self, model: str, *, score_threshold: float = 0.7, max_side: int = 640):
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorError(f"OpenCV {cv2.__version__} has no cv2.FaceDetectorYN (>= 4.8).")
        try:
            with _local_file(model) as local:
                self._detector = cv2.FaceDetectorYN.create(local, "", (320, 320),
                                                           score_threshold)
        except FileNotFoundError as error:
            raise DetectorError(f"YuNet model file {model!r} not found (--detector=yunet:PATH)."
                                ) from error
        except cv2.error as error:  # a Git LFS pointer or a web page saved as .onnx, say
            raise DetectorError(
                f"YuNet model file {model!r} cannot be loaded by OpenCV {cv2.__version__} "
                f"({error.err}): download face_detection_yunet_2023mar.onnx itself (from "
                "opencv_zoo) and pass --detector=yunet:PATH to it.") from error
        try:  # another network (opencv_zoo's SFace, say) loads, and fails on the first image
            self._detector.detect(np.zeros((320, 320, 3), np.uint8))  # the size it was made for
        except cv2.error as error:
            raise DetectorError(
                f"YuNet model file {model!r} is an ONNX model but not YuNet's ({error.err}): "
                "pass --detector=yunet:PATH to face_detection_yunet_2023mar.onnx.") from error
        self.max_side = max_side

    def __call__(self, image: np.ndarray) -> list[Face]:
        small, scale = _downscaled(image, self.max_side)
        self._detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self._detector.detect(np.ascontiguousarray(small[..., ::-1]))
        faces = []
        for row in np.zeros((0, 15)) if rows is None else rows:
            landmarks = np.asarray(row[4:14], np.float64).reshape(5, 2) / scale
            faces.append(Face(tuple(float(v) / scale for v in row[:4]), float(row[14]),
                              landmarks))
        return faces


def load_detector(spec: str = "haar") -> Callable[[np.ndarray], list[Face]]:
    """A detector from its command-line spec (see the module docstring)."""
    if spec in ("haar", "auto"):
        return HaarDetector()
    if spec.startswith("yunet:"):
        return YuNetDetector(spec.partition(":")[2])
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise DetectorError(
            f"Unknown detector {spec!r}: use 'haar', 'yunet:MODEL.onnx' or 'package.module:attr'."
        )
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise DetectorError(f"Cannot load detector {spec!r}: {error}") from error
    if (isinstance(target, type) or getattr(target, "is_detector_factory", False)
            or _takes_no_argument(target)):
        try:
            inspect.signature(target).bind()
        except TypeError as error:  # a class whose constructor needs arguments
            raise DetectorError(
                f"--detector={spec}: {attr} cannot be made with no arguments ({error}): give a "
                "function of no arguments that builds the detector, or the detector itself."
            ) from error
        except ValueError:  # no signature to check (some builtins)
            pass
        target = target()
    if not callable(target):
        raise DetectorError(f"--detector={spec} is {type(target).__name__}, not a detector: "
                            "give a callable image -> list of cer_jax.faces.Face, or a "
                            "class or function of no arguments that returns one.")
    return CheckedDetector(target, spec)


def _takes_no_argument(target: object) -> bool:
    """A factory: a function that cannot take the image (as the module docstring says, one
    called with no arguments returns the detector)."""
    if not callable(target):
        return False
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature (some builtins): taken as a detector
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.VAR_POSITIONAL)
    return not any(p.kind in positional for p in parameters)


class CheckedDetector:
    """Your own detector, whose answer is checked: a list of `Face`, else a DetectorError that
    says what it returned (not an AttributeError deep in predict)."""

    def __init__(self, detector: Callable[[np.ndarray], Sequence[Face]], spec: str):
        self.detector, self.spec = detector, spec

    def __call__(self, image: np.ndarray) -> list[Face]:
        found = self.detector(image)
        if isinstance(found, (str, bytes, dict, np.ndarray)) or not isinstance(found, Iterable):
            what = _described(found)
        else:
            found = list(found)
            bad = [face for face in found if not isinstance(face, Face)]
            if not bad:
                odd = [face.landmarks for face in found if face.landmarks is not None
                       and np.shape(face.landmarks) != (5, 2)]
                if not odd:
                    return found
                raise DetectorError(
                    f"--detector={self.spec} returned a Face whose landmarks have shape "
                    f"{np.shape(odd[0])}, not (5, 2): give the eye centres, nose tip and mouth "
                    "corners (image-left first), or landmarks=None to align by the box.")
            what = f"a list holding {_described(bad[0])}"
        raise DetectorError(
            f"--detector={self.spec} returned {what}, not a list of cer_jax.faces.Face: wrap "
            "each box as Face((x, y, w, h)) in pixels (optional landmarks: a 5x2 array, "
            "image-left eye first).")


def _described(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape}"
    return "None" if value is None else f"a {type(value).__name__}"


def box_landmarks(box: Sequence[float]) -> np.ndarray:
    """5 landmarks estimated from a frontal-face box (`HAAR_BOX_LANDMARKS`)."""
    x, y, w, h = box
    return HAAR_BOX_LANDMARKS * np.array([w, h]) + np.array([x, y])


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (scale, rotation, translation) mapping source -> target
    (Umeyama without reflection)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / s.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_t - matrix[:, :2] @ mu_s
    return matrix


def align_face(image: np.ndarray, face: Face, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The face as a RAF-DB-style aligned uint8 RGB crop [size, size, 3]."""
    landmarks = face.landmarks if face.landmarks is not None else box_landmarks(face.box)
    matrix = similarity(np.asarray(landmarks, np.float64), RAFDB_TEMPLATE * (size / ALIGNED_SIZE))
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    # Shrinking a lot: warp to an integer multiple of the size, then area-average (no aliasing).
    # Up to MAX_SUPERSAMPLING: a cap of 4 let a phone selfie's 2000-pixel face through with
    # every 5th pixel sampled (its noise and texture aliased, 3x what averaging leaves).
    factor = int(min(MAX_SUPERSAMPLING, max(1, np.floor(1.0 / max(scale, 1e-6)))))
    big = matrix * factor
    warped = cv2.warpAffine(
        image, big, (size * factor, size * factor), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if factor > 1:
        warped = cv2.resize(warped, (size, size), interpolation=cv2.INTER_AREA)
    return warped


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class IouTracker:
    """Greedy IoU tracker: each detection joins the live track it overlaps most (IoU >= the
    threshold), otherwise starts a new track; a track unseen for `max_missed` processed frames
    ends. Frames are numbered as decoded; with `frame_step` n only every n-th is processed."""

    def __init__(self, threshold: float = 0.3, max_missed: int = 15, frame_step: int = 1):
        self.threshold, self.max_missed = threshold, max_missed * frame_step
        self._tracks: dict[int, tuple[tuple[float, ...], int]] = {}  # id -> (box, last frame)
        self._next = 0

    def update(self, frame: int, faces: Sequence[Face]) -> list[int]:
        """Track ids of `faces` (same order) at `frame`."""
        self._tracks = {
            k: v for k, v in self._tracks.items() if frame - v[1] <= self.max_missed
        }
        pairs = sorted(
            ((iou(face.box, box), i, k) for i, face in enumerate(faces)
             for k, (box, _) in self._tracks.items()),
            reverse=True,
        )
        ids: dict[int, int] = {}
        used: set[int] = set()
        for overlap, i, k in pairs:
            if overlap < self.threshold:
                break
            if i in ids or k in used:
                continue
            ids[i] = k
            used.add(k)
        for i in sorted(range(len(faces)), key=lambda j: -faces[j].area):
            if i not in ids:
                ids[i], self._next = self._next, self._next + 1
        for i, face in enumerate(faces):
            self._tracks[ids[i]] = (tuple(face.box), frame)
        return [ids[i] for i in range(len(faces))]
