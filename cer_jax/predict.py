r"""Predict compound expressions of the faces in photos and videos with an ensemble artefact.

    python -m cer_jax.predict --ensemble=runs/fusion/ensemble photo.jpg clips/ --out=rows.csv
    python -m cer_jax.predict --ensemble=ENS --aligned aligned_faces/ --out=rows.jsonl
    python -m cer_jax.predict --ensemble=ENS videos/ --smooth_window=15 --annotate=annotated/
    python -m cer_jax.predict --ensemble=ENS videos/ --abaw_frames=test_frames.txt \
        --submission=predictions.txt

Inputs are image files, video files and folders (searched recursively, sorted; each folder
once however many links lead to it; a subfolder that cannot be listed is left out with a
warning). Each face gives one row (CSV, or JSON lines when --out ends in .jsonl / .json):
the source file, frame index and timestamp (videos), the face box in pixels, the track id
(videos), the predicted class, every class's fused probability and each member's predicted
class (UTF-8; a file name
that is not valid UTF-8 keeps its bytes). A file that cannot be read, an image without a face and
a video that cannot be decoded each give a row whose `status` says so; processing goes on (a
video's frames without a face have no row: a log line says how many). A
video that decodes fewer frames than its container counts (truncated, or an MP4 edit list) is a
warning, a failure only when the frame list asks for the missing frames. Inputs may be gs://
paths (a video is copied to a local temporary file for OpenCV). An input named on the command
line that does not exist is a usage error; a file named more than once (also through a folder)
is predicted once, with a warning. Exit status: 0 all inputs fine, 1 some input failed (its row
or an error log line says which), 2 a usage error or an output that cannot be written (one line
on stderr: `error: ...`), 130 stopped by Ctrl-C, 143 by SIGTERM.

The outputs (--out, --submission, --annotate) are checked before the model is loaded: the folder
must be creatable, a file target must not be a folder, an input or the frame list, --annotate
must not be a file. The rows file and the submission are written to `<path>.partial` next to the
target (for gs://, a local temporary file; a device or pipe such as /dev/null is written as it
is) and moved onto it once complete, so a failed or interrupted run (Ctrl-C, or the SIGTERM of
timeout, SLURM or docker stop) leaves an earlier file as it was and no half-written one; if
only that move fails the finished file is kept. Annotated
videos are staged the same way. An annotated copy never replaces an input (in the inputs' own
folder, photo.jpg's copy is photo_1.jpg).

Faces are found by `--detector` (see `cer_jax.faces`) and aligned like RAF-DB's 100x100
faces; `--aligned` treats every image as an already aligned face: each member gets its own
evaluation view of the whole image, as the trainer evaluates a dataset of such files.
`--flip_tta` averages each member over the face and its mirror image.

Videos are decoded as a stream (OpenCV; memory does not grow with the video's length apart
from a few numbers per face), faces are tracked by IoU (`--track=iou`) or only the largest face
of each frame is kept (`--track=largest`), faces are batched (`--batch_size`) across frames, and
each track's probabilities are averaged over a centred window of `--smooth_window` processed
frames (with `--frame_step=n`, n decoded frames apart; the skipped frames are only grabbed, not
converted to images). A frame's timestamp is the video's own (OpenCV's CAP_PROP_POS_MSEC, right
for variable-frame-rate videos) when that is valid and increasing through the video, else its
index / fps.

C-EXPR-DB submission (`--abaw_frames=LIST`): LIST has one `<video>/<frame>.jpg` per line
(1-based frame numbers, as the organisers give them; an `image_location` header line is
skipped; a list without entries is a usage error; UTF-8, or UTF-16 with a byte-order mark).
The videos are the inputs whose file stem is `<video>` (compared in Unicode's composed form):
when none of the listed videos is among the inputs that is a usage error, when some are missing
a warning says so at the start; input videos the list does not name are skipped (a log line
says how many; images still get rows). `--submission` (default submission.txt; a usage error without
`--abaw_frames`) gets the header
`image_location,Fearfully_Surprised,...,Sadly_Angry` and one `<video>/<frame:05d>.jpg,<class>`
row per listed frame, in the list's order. A frame's class is that of the video's main track
(the track seen in most frames) if it is in that frame, else of the largest face there; a frame
without a face takes the class of the nearest frame (in frame numbers) that has one, the earlier
on a tie; a video without any face, or missing, gets class 1 (Happily Surprised, the most
frequent of the 7 in RAF-DB) and makes the exit status 1. A video for which the list asks for
frames past the number decoded (the list's frame numbering differs from the decoded stream's,
e.g. a variable-frame-rate video or frames extracted at another rate) is logged and makes the
exit status 1. The ensemble must predict the 7 challenge classes, found by name: members
trained on `rafdb/compound_abaw7` (the challenge's order), on `rafdb/compound` (RAF-DB's 11
compound classes: a frame gets the most probable of the 7, the other 4 left out) or on a
`folder` dataset of those classes (any order) are mapped onto the challenge's indices.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import json
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import cv2
import numpy as np
from absl import flags, logging
from etils import epath

from cer_jax import cli
from cer_jax import faces as faces_lib
from cer_jax.errors import Terminated
from cer_jax.paths import (
    copy_file_atomically,
    error_reason,
    file_in_the_way,
    io_errors,
    is_remote,
    same_place,
)
from tfds_rafdb.layout import ABAW7_CLASSES  # the challenge's columns, in its order

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".pgm",
                    ".ppm", ".gif")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".3gp", ".ts", ".mts", ".m2ts")
ABAW_HEADER = "image_location," + ",".join(c.replace(" ", "_") for c in ABAW7_CLASSES)
ABAW_FALLBACK_CLASS = ABAW7_CLASSES.index("Happily Surprised")  # the most frequent in RAF-DB

_FLAGS = flags.FLAGS


def define_flags() -> None:
    def alias(name: str) -> None:
        if "_" in name:
            flags.DEFINE_alias(name.replace("_", "-"), name)

    cli.define_path_flag("ensemble", None, "Ensemble directory (`cer_jax.fuse` writes "
                        "<out>/ensemble).")
    cli.define_path_flag("out", None, "Rows file: .csv, or .jsonl / .json for JSON lines. "
                        "Default: CSV on stdout.")
    flags.DEFINE_bool("aligned", False, "Inputs are already aligned face crops: no detection.")
    flags.DEFINE_bool("flip_tta", False, "Average each member over the face and its mirror.")
    flags.DEFINE_string("detector", None,
                        "haar (the default) | yunet:MODEL.onnx | package.module:attr.")
    flags.DEFINE_integer("batch_size", 32, "Faces per forward pass.", lower_bound=1)
    flags.DEFINE_integer("smooth_window", 1, "Videos: average each track's probabilities over "
                         "this many processed frames, centred (an even window has one more "
                         "before; 1 = no smoothing).",
                         lower_bound=1)
    flags.DEFINE_integer("frame_step", 1, "Videos: process every n-th frame.", lower_bound=1)
    flags.DEFINE_enum("track", "iou", ["iou", "largest"], "Videos: IoU tracker over all "
                      "faces, or the largest face of each frame only.")
    cli.define_path_flag("annotate", None, "Folder for copies of the inputs with boxes and "
                        "labels drawn (images as .jpg, videos as MJPG .avi).")
    cli.define_path_flag("abaw_frames", None, "C-EXPR-DB frame list: write the submission.")
    cli.define_path_flag("submission", None, "Submission file (only with --abaw_frames; "
                        "default submission.txt).")
    for name in ("flip_tta", "batch_size", "smooth_window", "frame_step", "abaw_frames"):
        alias(name)


class UsageError(ValueError):
    """A mistake in the command line: reported as one line, exit status 2."""


class WriteError(UsageError):
    """An output that cannot be written (full disk, read-only folder, a folder in the way):
    one line naming the flag, the path and the fix, exit status 2."""

    def __init__(self, flag: str, path: str | os.PathLike, error: BaseException | str,
                 kept: str | None = None):
        if isinstance(error, IsADirectoryError):
            reason = "a folder is in the way"
        elif isinstance(error, OSError):
            reason = error_reason(error)
        else:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        if flag == "out" and os.fspath(path) == "stdout":
            message = f"cannot write the rows to stdout ({reason}): give --out=FILE"
        else:
            message = (f"--{flag}={os.fspath(path)} cannot be written ({reason}): free space, "
                       "or choose another path")
        if kept:
            message += f"; the finished file is kept as {kept} (move it there yourself)"
        super().__init__(message + ".")


# --- inputs ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    path: str
    kind: str  # "image" or "video"


def _walk(folder: epath.Path, skip: str | None = None) -> list[epath.Path]:
    """Every file under `folder`, sorted (epath's rglob refuses '**' on remote paths), less
    those in the folder `skip` (a `same_place` key). Each folder is searched once, however many
    links lead to it: two links back up the tree made 2^40 paths (a hang). A folder that cannot
    be listed (no permission: a drive's lost+found) is left out with a warning; `folder`
    itself is a UsageError. Hidden files and folders are left out, as dataset.folder's reader
    does: a folder copied from a Mac holds a `._photo.jpg` beside each photo (no image: a
    failure row each, and exit status 1), and `.DS_Store`, `.ipynb_checkpoints/` copies."""
    files: list[epath.Path] = []
    stack, seen = [folder], {same_place(os.fspath(folder))}
    while stack:
        current = stack.pop()
        try:
            children = sorted(current.iterdir(), reverse=True)  # popped in sorted order
        except io_errors() as error:
            if current is folder:  # the folder named on the command line
                raise UsageError(f"input folder {os.fspath(folder)!r} cannot be listed "
                                 f"({error_reason(error)}): check its permissions.") from error
            logging.warning("Cannot list the folder %s (%s): its files are left out.",
                            os.fspath(current), error_reason(error))
            continue
        for child in children:
            if child.name.startswith("."):
                continue
            if child.is_dir():
                key = same_place(os.fspath(child))
                if key != skip and key not in seen:
                    seen.add(key)
                    stack.append(child)
            else:
                files.append(child)
    return sorted(files)


def expand_inputs(inputs: Sequence[str], annotate: str | None = None) -> list[Source]:
    """Files as given (kind by extension; unknown extensions are tried as images) and folders
    searched recursively for image and video files (not hidden ones), sorted; a folder's
    search leaves out the `annotate` folder inside it (an earlier run's annotated copies are no
    inputs). A named path
    that does not exist is a UsageError. A file named twice (also through a folder, another
    spelling or a link) is kept once, at its first mention: twice would write its rows twice."""
    sources: list[Source] = []
    seen: dict[str, str] = {}  # resolved path -> the path as first given
    duplicates: list[tuple[str, str]] = []  # (as given again, as first given)

    def add(path: str, kind: str) -> None:
        key = same_place(path)
        if key in seen:
            duplicates.append((path, seen[key]))
        else:
            seen[key] = path
            sources.append(Source(path, kind))

    for item in inputs:
        path = epath.Path(item)
        if not path.exists():
            raise UsageError(f"input {item!r} does not exist: check the path (give image files, "
                             "video files or folders).")
        if path.is_dir():
            skipped = []
            for child in _walk(path, same_place(annotate) if annotate else None):
                suffix = child.suffix.lower()
                if suffix in IMAGE_EXTENSIONS:
                    add(os.fspath(child), "image")
                elif suffix in VIDEO_EXTENSIONS:
                    add(os.fspath(child), "video")
                else:
                    skipped.append(child.name)
            if skipped:  # said once, so that a folder of .gif or .heic files is not silent
                logging.warning(
                    "Skipped %d file(s) in %s that are neither images nor videos by extension "
                    "(e.g. %s); pass a file itself to try it as an image.",
                    len(skipped), item, ", ".join(skipped[:3]))
        else:
            add(item, "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image")
    if duplicates:
        logging.warning("Each input file is predicted once: %d later mention(s) of a file already "
                        "given were dropped (e.g. %s, the same file as %s).", len(duplicates),
                        *duplicates[0])
    return sources


def read_image(path: str) -> tuple[np.ndarray | None, str]:
    """(RGB uint8 image, "ok") or (None, why not)."""
    try:
        data = epath.Path(path).read_bytes()
    except FileNotFoundError:
        return None, "error: file not found"
    except (OSError, IsADirectoryError) as error:
        return None, f"error: cannot read file ({error.__class__.__name__})"
    if not data:
        return None, "error: empty file"
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # a header OpenCV refuses (over 2^30 pixels, some corrupt BMPs)
        return None, "error: not a readable image (too large, or a corrupt header)"
    if image is None:
        return None, "error: not a readable image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), "ok"


def _opencv_can_name(path: str) -> bool:
    """OpenCV takes file names as UTF-8 and crashes (segfault) on one that is not: a name
    Python read from non-UTF-8 bytes holds surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def opencv_path(path: str) -> Iterator[str]:
    """A local path OpenCV can open for the video `path`: itself, made absolute (FFmpeg takes
    a relative `take:2.mp4` or `day:1/clip.mp4` for a URL of protocol 'take' or 'day', and
    cannot open it); a symbolic link to it when its name is not valid UTF-8; a temporary copy
    (through epath) of a remote one, since OpenCV cannot read gs://. What was made is removed
    afterwards. Raises what reading raises."""
    if not is_remote(path) and _opencv_can_name(path):
        yield os.path.abspath(path)
        return
    suffix = epath.Path(path).suffix
    folder = tempfile.mkdtemp(prefix="cer_jax_predict_")
    local = os.path.join(folder, "video" + (suffix if _opencv_can_name(suffix) else ""))
    try:
        if is_remote(path):
            with epath.Path(path).open("rb") as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
        else:
            try:
                os.symlink(os.path.abspath(path), local)
            except OSError:  # no symbolic links here
                shutil.copyfile(path, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- outputs -----------------------------------------------------------------------------------


def written_in_place(path: str | os.PathLike) -> bool:
    """`path` is a device or a pipe (/dev/null, /dev/stdout to a pipe or terminal, a FIFO):
    written as it is. A staged file renamed onto it replaced it (as root, /dev/null became a
    regular file), and without root its folder (/dev) refused the staged file."""
    if is_remote(path):
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def staging_path(path: str | os.PathLike) -> str:
    """The local file an output is written to before it is published as `path`: its sibling
    `<path>.partial` (renamed onto it, atomically), or for a remote path a local temporary file
    (copied there at the end); a device or pipe (`written_in_place`) is its own."""
    if written_in_place(path):
        return os.fspath(path)
    if is_remote(path):
        handle, name = tempfile.mkstemp(prefix="cer_jax_predict_",
                                        suffix="_" + epath.Path(path).name)
        os.close(handle)
        return name
    return os.fspath(path) + ".partial"


def publish(flag: str, staged: str, target: str) -> None:
    """Puts the finished `staged` file at `target`. When that fails the file is kept (the
    error names it), so no finished work is lost. A local file is on disk before it is
    renamed, and the rename too (fsync): after a power loss `target` is the earlier file or
    this one, never an empty one. A remote file is copied beside `target` and renamed: a copy
    cut short leaves the earlier file. A device or pipe was written in place: nothing to do."""
    if staged == os.fspath(target):
        return
    try:
        if is_remote(target):  # never a cut file over the earlier one
            copy_file_atomically(staged, epath.Path(target))
            os.remove(staged)
        else:
            _fsync(staged, os.O_RDONLY)
            os.replace(staged, target)
            with contextlib.suppress(OSError):  # published: a folder that cannot sync is no error
                _fsync(os.path.dirname(os.path.abspath(target)), os.O_RDONLY | os.O_DIRECTORY)
    except io_errors() as error:
        raise WriteError(flag, target, error, kept=staged) from error
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the run did not end, so no output is new
        remove_quietly(staged)
        raise


def _fsync(path: str, flags: int) -> None:
    """fsync; a file system without it (EINVAL, ENOTSUP) is no error."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_quietly(path: str | None) -> None:
    """Removes a staged file; never a device or pipe written in place (/dev/null)."""
    if path is not None and os.path.isfile(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _check_folder_creatable(flag: str, value: str, folder: epath.Path) -> None:
    """`folder` exists or can be made: no file stands where one of its folders should be."""
    blocker = file_in_the_way(folder)
    if blocker is not None:
        raise UsageError(f"--{flag}={value}: {blocker} is a file, not a folder; choose another "
                         "path.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except io_errors() as error:
        raise UsageError(f"--{flag}={value}: cannot create the folder {os.fspath(folder)} "
                         f"({error_reason(error)}); choose a writable "
                         "place.") from error


def _probe_write(flag: str, value: str, probe: epath.Path) -> None:
    try:
        probe.write_text("")
        probe.unlink()
    except io_errors() as error:
        raise UsageError(f"--{flag}={value} cannot be written ({error_reason(error)}); "
                         "choose a writable "
                         "place.") from error


def _same_file(a: str, b: str) -> bool:
    if is_remote(a) or is_remote(b):
        return epath.Path(a) == epath.Path(b)
    return os.path.abspath(a) == os.path.abspath(b)


def check_not_an_input(sources: Sequence[Source], abaw_frames: str | None,
                       **outputs: str | None) -> None:
    """Before any work: no output file is the frame list or an input, which the run reads and
    the output would overwrite."""
    inputs = {same_place(s.path): s.path for s in sources}
    for flag, value in outputs.items():
        if not value:
            continue
        key = same_place(value)
        if abaw_frames and key == same_place(abaw_frames):
            raise UsageError(f"--{flag}={value} is the --abaw_frames list, which it would "
                             "overwrite: give another file.")
        if key in inputs:
            raise UsageError(f"--{flag}={value} is the input {inputs[key]}, which it would "
                             "overwrite: give another file.")


def check_output_file(flag: str, value: str) -> None:
    """Before any work: `value` is not a folder, its folder can be made, a file can be written
    next to it."""
    path = epath.Path(value)
    # A new `--out=results/` passed every check (epath drops the /) and failed at the write,
    # after the whole run's predictions, with "free space, or choose another path".
    if path.is_dir() or value.endswith(("/", os.sep)):
        example = path / ("submission.txt" if flag == "submission" else "rows.csv")
        what = "is a folder" if path.is_dir() else "ends in /, a folder"
        raise UsageError(f"--{flag}={value} {what}; give a file path (e.g. "
                         f"{os.fspath(example)}).")
    _check_folder_creatable(flag, value, path.parent)
    if not written_in_place(value):  # /dev/null: no staged file beside it
        _probe_write(flag, value, path.parent / (path.name + ".partial"))


def check_output_folder(flag: str, value: str) -> None:
    """Before any work: `value` is not a file and a file can be written in it."""
    path = epath.Path(value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--{flag}={value} is a file; give a folder (it gets an annotated copy "
                         "of each input).")
    _check_folder_creatable(flag, value, path)
    _probe_write(flag, value, path / ".cer_jax_predict_write_test.partial")


# --- rows --------------------------------------------------------------------------------------


def column_name(class_name: str) -> str:
    return "p_" + class_name.replace(" ", "_")


class RowWriter:
    """Writes rows as CSV or JSON lines, one per face (or per failed input)."""

    def __init__(self, stream: TextIO, fmt: str, class_names: Sequence[str],
                 member_names: Sequence[str], name: str = "stdout"):
        self.stream, self.fmt, self.name = stream, fmt, name  # name: for error messages
        self.class_names, self.member_names = list(class_names), list(member_names)
        self.fields = [
            "source", "kind", "frame", "timestamp_s", "face", "track", "x", "y", "w", "h",
            "status", "predicted_class", "predicted_index",
            *[column_name(c) for c in class_names],
            *[f"member_{m}" for m in member_names],
        ]
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, self.fields, lineterminator="\n")
            try:
                self._csv.writeheader()
            except (OSError, UnicodeEncodeError) as error:
                raise WriteError("out", self.name, error) from error

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as error:
            raise WriteError("out", self.name, error) from error

    def write(self, source: str, kind: str, status: str, *, frame: int | None = None,
              timestamp: float | None = None, face: int | None = None,
              track: int | None = None, box: Sequence[float] | None = None,
              probabilities: np.ndarray | None = None,
              member_classes: Sequence[int] | None = None) -> None:
        row: dict[str, Any] = {
            "source": source, "kind": kind, "frame": frame,
            "timestamp_s": None if timestamp is None else round(float(timestamp), 4),
            "face": face, "track": track, "status": status,
        }
        if box is not None:
            row.update(zip("xywh", (round(float(v), 1) for v in box), strict=True))
        if probabilities is not None:
            index = int(np.argmax(probabilities))
            row["predicted_class"], row["predicted_index"] = self.class_names[index], index
            probs = {c: round(float(p), 6) for c, p in zip(self.class_names, probabilities,
                                                           strict=True)}
            members = {m: self.class_names[int(k)] for m, k in zip(self.member_names,
                                                                  member_classes, strict=True)}
        else:
            probs, members = {}, {}
        try:
            if self.fmt == "csv":
                row.update({column_name(c): p for c, p in probs.items()})
                row.update({f"member_{m}": c for m, c in members.items()})
                self._csv.writerow({k: "" if v is None else v for k, v in row.items()})
            else:
                row = {k: v for k, v in row.items() if v is not None}
                if probs:
                    row["probabilities"], row["members"] = probs, members
                self.stream.write(json.dumps(row) + "\n")
        except (OSError, UnicodeEncodeError) as error:  # e.g. a name stdout's encoding lacks
            raise WriteError("out", self.name, error) from error


# --- progress -------------------------------------------------------------------------------


class Progress:
    """tqdm's bar (with ETA) when tqdm is installed and stderr is a terminal, else a log line
    with the rate and ETA every 10 s."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.last = total, 0, time.time(), time.time()
        self.bar = None
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="frame", disable=None, dynamic_ncols=True)
            if self.bar.disable:
                self.bar = None
        except ImportError:
            pass

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.time()
        if now - self.last >= 10.0 and self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logging.info("%d / %d frames, %.1f frames/s, ETA %.0f s", self.done, self.total,
                         rate, eta)
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def video_frame_count(path: str) -> int:
    """The container's frame count, for the progress bar; 0 when unknown (a remote video is
    not copied here just to count)."""
    if is_remote(path):
        return 0
    try:
        with opencv_path(path) as local:
            capture = cv2.VideoCapture(local)
            try:
                return (max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
                        if capture.isOpened() else 0)
            finally:
                capture.release()
    except OSError:
        return 0


# --- the predictor ----------------------------------------------------------------------------


@dataclasses.dataclass
class FaceRecord:
    """One face of one video frame (no pixels kept)."""

    frame: int
    timestamp: float
    index: int
    track: int
    box: tuple[float, float, float, float]
    probabilities: np.ndarray | None = None
    member_classes: np.ndarray | None = None


def smooth_tracks(records: list[FaceRecord], window: int, frame_step: int = 1) -> None:
    """Each record's probabilities := the mean over its track's records within a window of
    `window` processed frames centred on it (in place): window // 2 before and (window - 1) // 2
    after, so an even window has one more frame before than after. Frames are numbered as
    decoded and every `frame_step`-th one is processed, so that is window // 2 * frame_step
    decoded frames before, as the tracker counts."""
    if window <= 1:
        return
    before, after = (window // 2) * frame_step, ((window - 1) // 2) * frame_step
    by_track: dict[int, list[FaceRecord]] = {}
    for record in records:
        by_track.setdefault(record.track, []).append(record)
    for track in by_track.values():
        track.sort(key=lambda r: r.frame)
        frames = np.array([r.frame for r in track])
        probs = np.stack([r.probabilities for r in track])
        cumulative = np.concatenate([np.zeros((1, probs.shape[1])), np.cumsum(probs, 0)])
        lo = np.searchsorted(frames, frames - before, side="left")
        hi = np.searchsorted(frames, frames + after, side="right")
        smoothed = (cumulative[hi] - cumulative[lo]) / (hi - lo)[:, None]
        for record, p in zip(track, smoothed, strict=True):
            record.probabilities = p


def frame_classes(records: list[FaceRecord],
                  columns: np.ndarray | None = None) -> dict[int, int]:
    """frame -> class: the main track's (most frames) face there, else the largest face. With
    `columns` (`abaw_columns`), the class is the index into them of the most probable."""
    if not records:
        return {}
    counts: dict[int, int] = {}
    for record in records:
        counts[record.track] = counts.get(record.track, 0) + 1
    main = max(counts, key=lambda t: (counts[t], -t))
    chosen: dict[int, FaceRecord] = {}
    for record in records:
        best = chosen.get(record.frame)
        key = (record.track == main, record.box[2] * record.box[3])
        if best is None or key > (best.track == main, best.box[2] * best.box[3]):
            chosen[record.frame] = record
    if columns is None:
        return {f: int(np.argmax(r.probabilities)) for f, r in chosen.items()}
    return {f: int(np.argmax(r.probabilities[columns])) for f, r in chosen.items()}


def nearest_class(classes: dict[int, int], frame: int, sorted_frames: np.ndarray) -> int | None:
    """The class at `frame`, or at the nearest frame with a face (the earlier on a tie)."""
    if frame in classes:
        return classes[frame]
    if not len(sorted_frames):
        return None
    i = int(np.searchsorted(sorted_frames, frame))
    candidates = [sorted_frames[j] for j in (i - 1, i) if 0 <= j < len(sorted_frames)]
    best = min(candidates, key=lambda f: (abs(int(f) - frame), int(f)))
    return classes[int(best)]


class Predictor:
    def __init__(self, ensemble: Any, detector: Any, writer: RowWriter, *, aligned: bool,
                 flip_tta: bool, batch_size: int, smooth_window: int, frame_step: int,
                 track: str, annotate: str | None, progress: Progress | None = None,
                 listed_frames: dict[str, int] | None = None,
                 abaw_columns: np.ndarray | None = None):
        self.ensemble, self.detector, self.writer = ensemble, detector, writer
        self.aligned, self.flip_tta, self.batch_size = aligned, flip_tta, batch_size
        self.smooth_window, self.frame_step, self.track = smooth_window, frame_step, track
        self.annotate, self.progress = annotate, progress
        # --abaw_frames: video stem -> the highest frame number (1-based) the list asks for.
        self.listed_frames = listed_frames or {}
        # --abaw_frames: the ensemble's column of each challenge class (`abaw_columns`).
        self.abaw_columns = abaw_columns
        self.failures = 0
        self.video_classes: dict[str, dict[int, int]] = {}  # stem -> frame (0-based) -> class
        self.faces_predicted = 0
        self._annotated_names: set[str] = set()
        self.inputs: set[str] = set()  # `same_place` of every input: no annotated copy's name
        self._said_inputs = False

    # faces -> probabilities
    def classify(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(fused probabilities [N, K], member classes [N, M]) in batches of batch_size."""
        probs, members = [], []
        for i in range(0, len(crops), self.batch_size):
            # A list: --aligned faces keep their own sizes (see crop).
            out = self.ensemble.predict(crops[i : i + self.batch_size], flip_tta=self.flip_tta)
            probs.append(out.probabilities)
            members.append(out.member_probabilities.argmax(-1).T)
        self.faces_predicted += len(crops)
        return np.concatenate(probs), np.concatenate(members)

    def find_faces(self, image: np.ndarray) -> list[faces_lib.Face]:
        if self.aligned:
            h, w = image.shape[:2]
            return [faces_lib.Face((0.0, 0.0, float(w), float(h)))]
        try:
            found = self.detector(image)
        except faces_lib.DetectorError as error:  # your own detector's answer is no faces
            raise UsageError(str(error)) from error
        return sorted(found, key=lambda f: -f.area)

    def crop(self, image: np.ndarray, face: faces_lib.Face) -> np.ndarray:
        """What the members see: a detected face aligned to RAF-DB's 100x100 geometry; with
        --aligned the whole image, to which each member applies its own eval view as the
        trainer's evaluation of a dataset of these files does (a square cut from it first would
        drop the sides that a squashing view, MA-Net's, keeps)."""
        if self.aligned:
            return image
        return faces_lib.align_face(image, face, self.ensemble.aligned_size)

    def fail(self, source: Source, status: str, **kwargs: Any) -> None:
        self.failures += 1
        self.writer.write(source.path, source.kind, status, **kwargs)

    # images: batched across images
    def run_images(self, sources: list[Source]) -> None:
        pending: list[tuple[Source, int, faces_lib.Face, np.ndarray]] = []
        for source in sources:
            image, status = read_image(source.path)
            if image is None:
                self.fail(source, status)
            else:
                found = self.find_faces(image)
                if not found:
                    self.fail(source, "no face found")
                    if self.annotate:
                        self.write_annotated_image(source, image, [], None)
                for index, face in enumerate(found):
                    pending.append((source, index, face, self.crop(image, face)))
                if self.annotate and found:  # annotate needs this image's results now
                    self.flush_images(pending, image)
                    pending = []
            if len(pending) >= self.batch_size:
                self.flush_images(pending)
                pending = []
            if self.progress:
                self.progress.update()
        self.flush_images(pending)

    def flush_images(self, pending: list, image: np.ndarray | None = None) -> None:
        if not pending:
            return
        probs, members = self.classify([p[3] for p in pending])
        for (source, index, face, _), p, m in zip(pending, probs, members, strict=True):
            self.writer.write(source.path, "image", "ok", face=index, box=face.box,
                              probabilities=p, member_classes=m)
        if image is not None:
            self.write_annotated_image(pending[0][0], image, [p[2] for p in pending], probs)

    # videos
    def run_video(self, source: Source) -> None:
        """Predicts a video through a path OpenCV can open (a local copy of a remote one)."""
        with contextlib.ExitStack() as stack:
            try:
                local = stack.enter_context(opencv_path(source.path))
            except FileNotFoundError:
                local, status = None, "error: file not found"
            except io_errors() as error:
                local, status = None, f"error: cannot read file ({error.__class__.__name__})"
            if local is None:
                self.fail(source, status)
                if self.progress:
                    self.progress.update(1)
                return
            self._run_video(source, local)

    def _run_video(self, source: Source, local: str) -> None:
        capture = cv2.VideoCapture(local)
        if not capture.isOpened():
            self.fail(source, "error: cannot open video (missing, not a video, or broken)")
            if self.progress:
                self.progress.update(1)
            return
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and np.isfinite(fps) and fps > 0 else 25.0
        expected = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        tracker = faces_lib.IouTracker(frame_step=self.frame_step)
        records: list[FaceRecord] = []
        pending: list[tuple[FaceRecord, np.ndarray]] = []
        decoded = processed_frames = 0
        # The video's own timestamps (right for a variable frame rate) while they are valid
        # and increasing; otherwise every timestamp is index / fps.
        positions_valid, previous_ms = True, 0.0
        try:
            while True:
                index = decoded
                # grab() advances one frame; only the processed frames are retrieved
                # (converted to an image), so the indices are those of read().
                if not capture.grab():
                    break
                processed = index % self.frame_step == 0
                if processed:
                    ok, frame = capture.retrieve()
                    if not ok or frame is None:
                        break
                decoded += 1
                if self.progress:
                    self.progress.update()
                ms = capture.get(cv2.CAP_PROP_POS_MSEC)
                if not (np.isfinite(ms) and ms >= 0 and (index == 0 or ms > previous_ms)):
                    positions_valid = False
                previous_ms = ms
                if not processed:
                    continue
                processed_frames += 1
                image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                found = self.find_faces(image)
                if self.track == "largest":
                    found = found[:1]
                ids = tracker.update(index, found)
                for i, (face, track) in enumerate(zip(found, ids, strict=True)):
                    record = FaceRecord(index, ms / 1000.0, i, track, face.box)
                    pending.append((record, self.crop(image, face)))
                if len(pending) >= self.batch_size:
                    self._flush_video(pending, records)
                    pending = []
            self._flush_video(pending, records)
        finally:
            capture.release()
        if decoded == 0:
            self.fail(source, "error: no frame could be decoded (broken or empty video)")
            return
        if not positions_valid:
            for r in records:
                r.timestamp = r.frame / fps
        smooth_tracks(records, self.smooth_window, self.frame_step)
        for r in records:
            self.writer.write(source.path, "video", "ok", frame=r.frame, timestamp=r.timestamp,
                              face=r.index, track=r.track, box=r.box,
                              probabilities=r.probabilities, member_classes=r.member_classes)
        stem = video_name(source.path)
        self.video_classes[stem] = frame_classes(records, self.abaw_columns)
        listed = self.listed_frames.get(stem, 0)
        # Fewer frames than the container says is a failure only when frames asked for are
        # missing: an MP4 edit list (a cut made with `ffmpeg -ss ... -c copy`) hides frames
        # that are counted but never shown.
        short = bool(expected) and decoded < expected - max(2, expected // 100)
        if listed > decoded:
            message = (
                f"the frame list asks for frames up to {listed} but only {decoded} were "
                "decoded: " + (
                    f"the video ended after {decoded} of the {expected} frames its "
                    "container counts (a truncated file, or an edit list that hides some)"
                    if short else
                    "its frame numbering differs from the video's (e.g. a "
                    "variable-frame-rate video, or frames extracted at another rate)")
            )
            logging.error("Video %r (%s): %s. Its listed frames past %d get the class of the "
                          "nearest decoded frame with a face.", stem, source.path, message,
                          decoded)
            self.fail(source, f"error: {message}", frame=decoded)
        elif short:
            logging.warning("Video %s: %d of the %d frames its container counts were decoded "
                            "(an edit list that hides some, or a truncated file); every "
                            "decoded frame was predicted.", source.path, decoded, expected)
        if not records:
            self.fail(source, "no face found in any frame")
        elif len({r.frame for r in records}) < processed_frames:  # else they went unsaid
            faceless = processed_frames - len({r.frame for r in records})
            logging.info("Video %s: no face found in %d of its %d processed frames; they have "
                         "no rows%s.", source.path, faceless, processed_frames,
                         " (the submission gives a listed one the class of the nearest frame "
                         "with a face)" if stem in self.listed_frames else "")
        if self.annotate:
            self.write_annotated_video(source, local, records, fps)

    def _flush_video(self, pending: list, records: list[FaceRecord]) -> None:
        if not pending:
            return
        probs, members = self.classify([p[1] for p in pending])
        for (record, _), p, m in zip(pending, probs, members, strict=True):
            record.probabilities, record.member_classes = p, m
            records.append(record)

    # annotation
    def _annotated_path(self, source: Source, suffix: str) -> epath.Path:
        """A new name in --annotate for the copy of `source`: never an earlier copy's, nor an
        input's (--annotate=the inputs' folder wrote photo.jpg's copy over photo.jpg)."""
        folder = epath.Path(self.annotate)
        name = epath.Path(source.path).stem + suffix
        base, n, clashed = name, 1, False
        while name in self._annotated_names or same_place(os.fspath(folder / name)) in (
                self.inputs):
            clashed |= name not in self._annotated_names
            name = f"{epath.Path(base).stem}_{n}{suffix}"
            n += 1
        self._annotated_names.add(name)
        if clashed and not self._said_inputs:
            logging.warning("--annotate=%s holds inputs: an annotated copy never replaces one, "
                            "it gets a number instead (e.g. %s's copy is %s).", self.annotate,
                            source.path, name)
            self._said_inputs = True
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except io_errors() as error:
            raise WriteError("annotate", self.annotate, error) from error
        return folder / name

    def draw(self, bgr: np.ndarray, box: Sequence[float], probabilities: np.ndarray,
             track: int | None = None) -> None:
        x, y, w, h = (int(round(v)) for v in box)
        index = int(np.argmax(probabilities))
        label = f"{self.ensemble.class_names[index]} {probabilities[index]:.2f}"
        if track is not None:
            label = f"#{track} {label}"
        thickness = max(1, round(max(bgr.shape[:2]) / 400))
        cv2.rectangle(bgr, (x, y), (x + w, y + h), (0, 220, 0), thickness)
        scale = max(0.4, max(bgr.shape[:2]) / 1200)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y - th - base - 2)
        cv2.rectangle(bgr, (x, top), (x + tw + 2, top + th + base + 2), (0, 220, 0), -1)
        cv2.putText(bgr, label, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)

    def write_annotated_image(self, source: Source, image: np.ndarray,
                              found: list[faces_lib.Face], probs: np.ndarray | None) -> None:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        for face, p in zip(found, probs if probs is not None else [], strict=False):
            self.draw(bgr, face.box, p)
        ok, data = cv2.imencode(".jpg", bgr)
        if ok:
            path = self._annotated_path(source, ".jpg")
            try:
                path.write_bytes(data.tobytes())
            except io_errors() as error:
                raise WriteError("annotate", path, error) from error

    def write_annotated_video(self, source: Source, local: str, records: list[FaceRecord],
                              fps: float) -> None:
        """A second streamed pass over the video (at `local`, a path OpenCV can open), drawing
        each frame's (smoothed) faces. OpenCV writes only local files with UTF-8 names, so the
        video is written to a local temporary file and then published (renamed, or copied to
        gs://)."""
        by_frame: dict[int, list[FaceRecord]] = {}
        for r in records:
            by_frame.setdefault(r.frame, []).append(r)
        path = self._annotated_path(source, ".avi")
        try:
            # Not mkstemp, whose file is private (0600): the video gets the mode (umask) of
            # any new file, as the annotated images and the rows file do.
            staged = os.path.join(
                tempfile.gettempdir() if is_remote(path) else os.fspath(path.parent),
                f".cer_jax_predict_{secrets.token_hex(8)}.partial.avi")
            os.close(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as error:
            raise WriteError("annotate", path, error) from error
        capture = cv2.VideoCapture(local)
        writer, index, finished = None, 0, False
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                if writer is None:
                    writer = cv2.VideoWriter(staged, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                             (frame.shape[1], frame.shape[0]))
                    if not writer.isOpened():
                        raise WriteError("annotate", path, "OpenCV cannot open a video writer "
                                         "for it")
                for r in by_frame.get(index, []):
                    self.draw(frame, r.box, r.probabilities, r.track)
                writer.write(frame)
                index += 1
            if writer is not None:
                writer.release()
                finished = True
        finally:
            capture.release()
            if writer is not None:
                writer.release()
            if not finished:  # failed, stopped, or no frame decoded this time
                remove_quietly(staged)
        if finished:
            publish("annotate", staged, os.fspath(path))


# --- the C-EXPR-DB submission -----------------------------------------------------------------


def abaw_columns(class_names: Sequence[str]) -> np.ndarray:
    """The ensemble's column of each challenge class, in the challenge's order, found by name
    (spaces or underscores, any case): an ensemble over the 7 classes in another order (a
    `folder` dataset sorts its classes) or over RAF-DB's 11 compound classes maps onto the
    challenge's indices, its other classes left out. A challenge class it lacks is a
    UsageError."""
    columns: dict[str, int] = {}
    for index, name in enumerate(class_names):
        columns.setdefault(name.replace("_", " ").strip().lower(), index)
    missing = [c for c in ABAW7_CLASSES if c.lower() not in columns]
    if missing:
        raise UsageError(
            f"--abaw_frames needs an ensemble that predicts the 7 C-EXPR-DB classes, this one "
            f"predicts {len(class_names)} classes ({', '.join(class_names[:3])}, ...) without "
            f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}: train the members "
            "with --config.dataset.name=rafdb/compound_abaw7 (or rafdb/compound), then fuse "
            "them with python -m cer_jax.fuse."
        )
    return np.array([columns[c.lower()] for c in ABAW7_CLASSES])


def check_video_names(sources: Sequence[Source]) -> None:
    """The submission finds a listed video by its file name without extension: two input videos
    of the same name would overwrite each other's frames."""
    by_name: dict[str, list[str]] = {}
    for source in sources:
        if source.kind == "video":
            by_name.setdefault(video_name(source.path), []).append(source.path)
    for name, paths in by_name.items():
        if len(paths) > 1:
            raise UsageError(
                f"--abaw_frames finds videos by name, and {len(paths)} inputs are named "
                f"{name!r}: {', '.join(paths)}; pass only the C-EXPR-DB videos."
            )


def only_listed_videos(sources: Sequence[Source], listed_frames: dict[str, int],
                       list_path: str) -> list[Source]:
    """The inputs less the videos the frame list does not name: the challenge's 56 videos
    usually sit in a folder with the rest of C-EXPR-DB's 400, which would take 7 times as long.
    Images stay (they get rows only)."""
    kept = [s for s in sources if s.kind != "video" or video_name(s.path) in listed_frames]
    if len(kept) < len(sources):
        logging.info("Skipping the %d input videos that %s does not list (predict them in a run "
                     "without --abaw_frames).", len(sources) - len(kept), list_path)
    return kept


def read_frame_list(path: str) -> list[tuple[str, int]]:
    """(video, 1-based frame number) per line of the organisers' list: UTF-8, or UTF-16 with
    its byte-order mark (what Windows PowerShell's `>` writes)."""
    list_path = epath.Path(path)
    if list_path.is_dir():
        raise UsageError(f"--abaw_frames={path} is a folder: give the organisers' list of "
                         "C-EXPR-DB frames (a text file).")
    try:
        data = list_path.read_bytes()
    except FileNotFoundError as error:
        raise UsageError(f"--abaw_frames={path} does not exist: check the path (the "
                         "organisers' list of C-EXPR-DB frames).") from error
    except io_errors() as error:
        raise UsageError(f"--abaw_frames={path} cannot be read ({error_reason(error)}): check its "
                         "permissions.") from error
    try:
        # utf-8-sig / utf-16 drop the byte-order mark (epath's read_text ignores encoding=).
        utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
        lines = data.decode("utf-16" if utf16 else "utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(f"--abaw_frames={path} is not text (not UTF-8 or UTF-16): save the "
                         "organisers' list as UTF-8 text.") from error
    entries = []
    for number, line in enumerate(lines, 1):
        item = line.strip().split(",")[0].strip()
        if not item or item.lower() == "image_location":
            continue
        video, _, frame = item.rpartition("/")
        stem = frame.rsplit(".", 1)[0]
        if video and stem.isdigit() and int(stem) == 0:  # a list numbered from 0, not ABAW's
            raise UsageError(
                f"{path}:{number}: {item!r} is frame 0, but C-EXPR-DB frame numbers start at 1 "
                "(00001.jpg is a video's first frame): give the organisers' list, or add 1 to "
                "every frame number of a 0-based one."
            )
        if not video or not stem.isdigit():
            raise UsageError(
                f"{path}:{number}: {line.strip()!r} is not '<video>/<frame number>.jpg'."
            )
        entries.append((video, int(stem)))
    if not entries:
        raise UsageError(
            f"--abaw_frames file {path!r} lists no frames: it needs one "
            "'<video>/<frame number>.jpg' per line (after an optional image_location header)."
        )
    return entries


def video_name(path: str) -> str:
    """The name by which the frame list finds the video at `path`: its file name without
    extension, in Unicode's composed form (NFC), as `listed_video_key` reads the list's
    names: an accented name is stored decomposed (NFD) by macOS tools and composed in most
    lists, and the two spellings must meet."""
    return unicodedata.normalize("NFC", epath.Path(path).stem)


def listed_video_key(video: str, stems: set[str] | dict) -> str:
    """The input video (its `video_name`) a listed `<video>` means: its whole name, else its
    last component."""
    video = unicodedata.normalize("NFC", video)
    return video if video in stems else video.rsplit("/", 1)[-1]


def check_listed_videos(list_path: str, entries: list[tuple[str, int]],
                        sources: Sequence[Source]) -> dict[str, int]:
    """Before any work: the listed videos against the input videos. None of them among the
    inputs is a UsageError, some missing a warning. Returns input video stem -> the highest
    frame number the list asks for."""
    stems = {video_name(s.path) for s in sources if s.kind == "video"}
    highest: dict[str, int] = {}
    listed: list[str] = []
    missing: list[str] = []
    for video, frame in entries:
        if video not in listed:
            listed.append(video)
        key = listed_video_key(video, stems)
        if key in stems:
            highest[key] = max(highest.get(key, 0), frame)
        elif video not in missing:
            missing.append(video)
    if not highest:
        image_folders = {unicodedata.normalize("NFC", epath.Path(s.path).parent.name)
                         for s in sources if s.kind == "image"}
        frames_hint = ""
        if any(listed_video_key(v, image_folders) in image_folders for v in missing):
            frames_hint = (" (the inputs are images in folders named like the listed videos: "
                           "the submission needs the videos themselves, not extracted frames)")
        raise UsageError(
            f"none of the {len(listed)} videos in {list_path} is among the inputs (e.g. "
            f"{missing[0]!r}, which needs an input video named {missing[0].rsplit('/', 1)[-1]}"
            f".mp4 or similar){frames_hint}; pass the C-EXPR-DB videos or their folder."
        )
    if missing:
        logging.warning(
            "%d of the %d videos in %s are not among the inputs (e.g. %s): their frames will "
            "get class %d and the exit status will be 1.", len(missing), len(listed),
            list_path, ", ".join(repr(v) for v in missing[:3]), ABAW_FALLBACK_CLASS)
    return highest


def write_submission(path: str, entries: list[tuple[str, int]],
                     video_classes: dict[str, dict[int, int]]) -> list[str]:
    """Writes the submission; returns the listed videos that had no face (or no input)."""
    lines = [ABAW_HEADER]
    missing: list[str] = []
    sorted_frames = {v: np.array(sorted(c)) for v, c in video_classes.items()}
    for video, frame in entries:
        key = listed_video_key(video, video_classes)
        classes = video_classes.get(key)
        label = None
        if classes is not None:
            label = nearest_class(classes, frame - 1, sorted_frames[key])
        if label is None:
            if video not in missing:
                missing.append(video)
            label = ABAW_FALLBACK_CLASS
        lines.append(f"{video}/{frame:05d}.jpg,{label}")
    # Staged, then published: an earlier submission stays as it was until this one is whole.
    staged = staging_path(path)
    try:
        with open(staged, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as error:
        remove_quietly(staged)
        raise WriteError("submission", path, error) from error
    except KeyboardInterrupt:
        remove_quietly(staged)
        raise
    publish("submission", staged, path)
    return missing


# --- command line ----------------------------------------------------------------------------


def run(inputs: Sequence[str], *, ensemble: str, out: str | None = None, aligned: bool = False,
        flip_tta: bool = False, detector: str | None = None, batch_size: int = 32,
        smooth_window: int = 1, frame_step: int = 1, track: str = "iou",
        annotate: str | None = None, abaw_frames: str | None = None,
        submission: str | None = None, show_progress: bool = True,
        written: list[str] | None = None) -> int:
    """Everything the command does; returns the exit status (0 fine, 1 some input failed).
    Raises UsageError for command-line mistakes (before any work) and WriteError (a
    UsageError) for an output that cannot be written. `written` gets '--out=PATH' and
    '--submission=PATH' as each is published, for the message of a run stopped after one."""
    written = [] if written is None else written
    from cer_jax import ensemble as ensemble_lib

    if not inputs:
        raise UsageError("No inputs: pass image files, video files or folders after the flags.")
    # The flags have absl bounds; this is for callers of run().
    for flag, value in (("batch_size", batch_size), ("smooth_window", smooth_window),
                        ("frame_step", frame_step)):
        if value < 1:
            raise UsageError(f"--{flag}={value}: it must be 1 or more.")
    if submission and not abaw_frames:
        raise UsageError(f"--submission={submission} needs --abaw_frames=LIST (the organisers' "
                         "list of C-EXPR-DB frames to predict).")
    if abaw_frames and not submission:
        submission = "submission.txt"
    if aligned and detector is not None:
        raise UsageError(f"--aligned takes each image as an aligned face and finds none, so "
                         f"--detector={detector} would not be used: leave one of them out.")
    entries = read_frame_list(abaw_frames) if abaw_frames else []
    sources = expand_inputs(inputs, annotate)
    if not sources:
        raise UsageError(f"No image or video files in {', '.join(inputs)}.")
    input_places = {same_place(s.path) for s in sources}  # the unlisted videos' too
    listed_frames: dict[str, int] = {}
    if abaw_frames:
        listed_frames = check_listed_videos(abaw_frames, entries, sources)
        sources = only_listed_videos(sources, listed_frames, abaw_frames)
        check_video_names(sources)
    # The outputs, before the model is loaded and hours are spent.
    check_not_an_input(sources, abaw_frames, out=out, submission=submission)
    if out:
        check_output_file("out", out)
    if submission:
        check_output_file("submission", submission)
        if out and _same_file(out, submission):
            raise UsageError(f"--out and --submission are both {out}: give two files.")
    if annotate:
        check_output_folder("annotate", annotate)
    try:
        model = ensemble_lib.load_ensemble(ensemble)
    except ensemble_lib.EnsembleError as error:
        raise UsageError(str(error)) from error
    columns = None
    if abaw_frames:
        columns = abaw_columns(model.class_names)
        if len(model.class_names) > len(ABAW7_CLASSES):
            logging.info(
                "Submission: the ensemble predicts %d classes; each frame gets the most probable "
                "of the challenge's 7 (%s left out).", len(model.class_names),
                ", ".join(c for i, c in enumerate(model.class_names) if i not in set(columns)))
    try:
        face_detector = None if aligned else faces_lib.load_detector(
            "haar" if detector is None else detector)
    except faces_lib.DetectorError as error:
        raise UsageError(str(error)) from error
    fmt = "jsonl" if out and out.lower().endswith((".jsonl", ".json")) else "csv"
    total = sum(1 if s.kind == "image" else max(video_frame_count(s.path), 1) for s in sources)
    # The rows are staged (<out>.partial, or a local file for a remote --out) and published
    # once complete; a failed or interrupted run removes the staged file and leaves an earlier
    # --out as it was.
    staged = staging_path(out) if out else None
    stream: TextIO
    stdout_errors = None  # stdout's error handler, to restore
    if staged is not None:
        try:
            # UTF-8 everywhere; a file name that is not valid UTF-8 keeps its bytes.
            stream = open(staged, "w", encoding="utf-8", errors="surrogateescape",  # noqa: SIM115
                          newline="")  # (closed below, before publishing)
        except OSError as error:
            remove_quietly(staged)
            raise WriteError("out", out, error) from error
    else:
        stream = sys.stdout
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", None) == "strict":
            stdout_errors = stream.errors
            stream.reconfigure(errors="surrogateescape")
    progress = Progress(total) if show_progress else None
    start = time.time()
    rows_error: WriteError | None = None
    finished = False
    try:
        writer = RowWriter(stream, fmt, model.class_names, model.member_names,
                           name=out or "stdout")
        predictor = Predictor(
            model, face_detector, writer, aligned=aligned, flip_tta=flip_tta,
            batch_size=batch_size, smooth_window=smooth_window, frame_step=frame_step,
            track=track, annotate=annotate, progress=progress, listed_frames=listed_frames,
            abaw_columns=columns,
        )
        predictor.inputs = input_places
        predictor.run_images([s for s in sources if s.kind == "image"])
        writer.flush()
        for source in sources:
            if source.kind == "video":
                predictor.run_video(source)
                writer.flush()
        failures = predictor.failures
        if staged is not None:
            try:
                stream.close()
            except OSError as error:
                raise WriteError("out", out, error) from error
            finished = True
            try:
                publish("out", staged, out)
                written.append(f"--out={out}")
            except WriteError as error:  # the rows are kept; the submission is still written
                rows_error = error
    except ensemble_lib.EnsembleError as error:  # its fusion does not fit its members
        raise UsageError(str(error)) from error
    finally:
        if progress:
            progress.close()
        if staged is not None:
            if not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
            if not finished:
                remove_quietly(staged)
        else:
            try:
                stream.flush()
                if stdout_errors is not None:
                    stream.reconfigure(errors=stdout_errors)
            except (OSError, ValueError):
                pass
    elapsed = time.time() - start
    logging.info("%d face(s) from %d input(s) in %.1f s (%.1f faces/s); %d input(s) failed.",
                 predictor.faces_predicted, len(sources), elapsed,
                 predictor.faces_predicted / max(elapsed, 1e-9), failures)
    if abaw_frames:
        missing = write_submission(submission, entries, predictor.video_classes)
        written.append(f"--submission={submission}")
        input_videos = {video_name(s.path) for s in sources if s.kind == "video"}
        for video in missing:
            key = listed_video_key(video, input_videos)
            why = ("was not among the inputs" if key not in input_videos else
                   "could not be decoded (its row says why)"
                   if key not in predictor.video_classes else "has no face in any frame")
            logging.error("Submission: video %r %s; its frames got class %d.", video, why,
                          ABAW_FALLBACK_CLASS)
        failures += len(missing)
    if rows_error is not None:
        raise rows_error
    return 1 if failures else 0


def _raise_terminated(signum: int, frame: Any) -> None:
    """SIGTERM (timeout, SLURM, docker stop) raised where the run is, to take Ctrl-C's path:
    the staged outputs are removed and earlier ones stay as they were."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise Terminated


def main(argv: Sequence[str]) -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    if not _FLAGS.ensemble:
        print("error: --ensemble=DIR is required (the ensemble directory that "
              "python -m cer_jax.fuse writes to <out>/ensemble).", file=sys.stderr)
        sys.exit(2)
    written: list[str] = []
    try:
        status = run(
            argv[1:], ensemble=_FLAGS.ensemble, out=_FLAGS.out, aligned=_FLAGS.aligned,
            flip_tta=_FLAGS.flip_tta, detector=_FLAGS.detector, batch_size=_FLAGS.batch_size,
            smooth_window=_FLAGS.smooth_window, frame_step=_FLAGS.frame_step,
            track=_FLAGS.track, annotate=_FLAGS.annotate, abaw_frames=_FLAGS.abaw_frames,
            submission=_FLAGS.submission, written=written,
        )
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as Terminated
        by, signum = (("SIGTERM", signal.SIGTERM) if isinstance(stop, Terminated)
                      else ("Ctrl-C", signal.SIGINT))
        print(f"error: {stopped_message(by, written, bool(_FLAGS.abaw_frames))}",
              file=sys.stderr)
        sys.exit(128 + signum)
    sys.exit(status)


def stopped_message(by: str, written: Sequence[str], submission: bool) -> str:
    """The line of a run stopped by Ctrl-C or SIGTERM: the outputs it had published (the rows
    are published before the submission is written) and those left as they were."""
    if not written:
        return (f"stopped by {by}: the unfinished outputs were not written (an earlier --out "
                "or --submission is as it was).")
    done = " and ".join(written)
    were = "was" if len(written) == 1 else "were"
    if submission and not any(w.startswith("--submission=") for w in written):
        return (f"stopped by {by} after {done} {were} written in full: the submission was not "
                "(an earlier --submission is as it was).")
    return f"stopped by {by} after {done} {were} written in full."


if __name__ == "__main__":
    define_flags()
    cli.run(main)
