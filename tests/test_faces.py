"""Face detection on real photographs shipped in installed packages, alignment, tracking."""

import os
import re

import cv2
import matplotlib
import numpy as np
import pytest
from matplotlib import cbook

from cer_jax import faces

needs_haar = pytest.mark.skipif(
    not faces.haar_available(),
    reason=f"OpenCV {cv2.__version__} ships no Haar cascades (needs opencv-python-headless<5)",
)


def rgb(path):
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def grace_hopper():
    return rgb(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def no_face_photo():
    """A photograph of a backpack (matplotlib's sample data): no person."""
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "Minduka_Present_Blue_Pack.png")
    return rgb(path)


def astronaut():
    data = pytest.importorskip("skimage.data")
    return data.astronaut()


@needs_haar
@pytest.mark.parametrize("photo, centre", [(grace_hopper, (264, 215)), (astronaut, (223, 113))])
def test_a_face_is_found_where_the_person_is(photo, centre):
    found = faces.HaarDetector()(photo())
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert abs(x + w / 2 - centre[0]) < 0.2 * w and abs(y + h / 2 - centre[1]) < 0.2 * h
    crop = faces.align_face(photo(), found[0])
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8


@needs_haar
def test_no_face_in_photos_without_people():
    assert faces.HaarDetector()(no_face_photo()) == []
    data = pytest.importorskip("skimage.data")
    assert faces.HaarDetector()(data.coffee()) == []


def test_alignment_puts_landmarks_on_the_rafdb_template():
    rng = np.random.default_rng(0)
    # A similarity (scale 3, 20 degrees, shifted) of the template, as a detector would report.
    angle = np.deg2rad(20)
    rotation = 3.0 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = faces.RAFDB_TEMPLATE @ rotation.T + np.array([200.0, 150.0])
    matrix = faces.similarity(landmarks, faces.RAFDB_TEMPLATE)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(mapped, faces.RAFDB_TEMPLATE, atol=1e-9)
    # A dot drawn at the left eye lands at the template's left eye in the 100x100 crop.
    image = rng.integers(0, 30, (600, 600, 3), dtype=np.uint8)
    cv2.circle(image, tuple(int(v) for v in landmarks[0].round()), 6, (255, 255, 255), -1)
    crop = faces.align_face(image, faces.Face((0, 0, 1, 1), landmarks=landmarks))
    y, x = np.unravel_index(crop[..., 0].astype(int).argmax(), crop.shape[:2])
    assert abs(x - faces.RAFDB_TEMPLATE[0, 0]) <= 2 and abs(y - faces.RAFDB_TEMPLATE[0, 1]) <= 2


def test_a_large_face_is_cropped_as_the_same_photo_made_smaller():
    """The warp was capped at 4x the crop: a 1600-pixel face (a phone selfie's) was sampled at
    every 4th pixel, its fine texture aliased: 9.4 grey levels from the crop of the same photo
    shrunk 8x (the noise 3x what averaging leaves); now ~1.6."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (2400, 2400, 3), dtype=np.uint8)  # texture at every scale
    small = cv2.resize(big, (300, 300), interpolation=cv2.INTER_AREA)
    crop = faces.align_face(big, faces.Face((400.0, 400.0, 1600.0, 1600.0))).astype(float)
    reference = faces.align_face(small, faces.Face((50.0, 50.0, 200.0, 200.0))).astype(float)
    assert np.abs(crop - reference).mean() < 3


def least_squares_similarity(source, target):
    """The reference: x' = a x - b y + tx, y' = b x + a y + ty fitted by numpy's lstsq."""
    x, y = source.T
    rows = np.concatenate([np.stack([x, -y, np.ones_like(x), np.zeros_like(x)], 1),
                           np.stack([y, x, np.zeros_like(x), np.ones_like(x)], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, np.concatenate(target.T), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def test_box_only_crop_is_an_upright_square_around_the_box():
    box = (100.0, 80.0, 200.0, 200.0)
    matrix = faces.similarity(faces.box_landmarks(box), faces.RAFDB_TEMPLATE)
    assert abs(matrix[0, 1]) < 1e-9 and abs(matrix[1, 0]) < 1e-9  # no rotation
    side = 100.0 / matrix[0, 0]
    assert 1.0 < side / box[2] < 1.3
    # The box's landmarks are no exact similarity of the template: the least-squares one.
    np.testing.assert_allclose(
        matrix, least_squares_similarity(faces.box_landmarks(box), faces.RAFDB_TEMPLATE),
        atol=1e-9)
    assert matrix[0, :2] @ (200.0, 180.0) + matrix[0, 2] == pytest.approx(50.0)  # centred


def test_similarity_of_landmarks_off_the_template_is_the_least_squares_one():
    """A detector's landmarks fit the template only roughly: the fit minimises the squared
    distances (recovering an exact similarity, as above, does not show that)."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        landmarks = rng.uniform(50, 400, (5, 2))
        np.testing.assert_allclose(
            faces.similarity(landmarks, faces.RAFDB_TEMPLATE),
            least_squares_similarity(landmarks, faces.RAFDB_TEMPLATE), atol=1e-9)


def test_iou_tracker_keeps_identities_and_starts_new_tracks():
    tracker = faces.IouTracker(threshold=0.3, max_missed=2)
    a, b = faces.Face((0, 0, 50, 50)), faces.Face((200, 0, 40, 40))
    assert tracker.update(0, [a, b]) == [0, 1]
    moved = [faces.Face((205, 2, 40, 40)), faces.Face((4, 3, 50, 50))]
    assert tracker.update(1, moved) == [1, 0]
    assert tracker.update(10, [a]) == [2]  # track 0 expired after max_missed frames


def test_iou_is_overlap_over_union_and_a_track_is_joined_from_the_threshold_on():
    """By hand: two 10x10 boxes 5 px apart share 50 of 150 px (1/3); 6 px apart, 40 of 160
    (1/4); diagonally 5 px apart, 25 of 175. The boxes above overlap too much to show it."""
    assert faces.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(1 / 3)
    assert faces.iou((0, 0, 10, 10), (6, 0, 10, 10)) == pytest.approx(1 / 4)
    assert faces.iou((0, 0, 10, 10), (5, 5, 10, 10)) == pytest.approx(1 / 7)
    assert faces.iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0
    tracker = faces.IouTracker(threshold=0.3)
    assert tracker.update(0, [faces.Face((0, 0, 10, 10))]) == [0]
    assert tracker.update(1, [faces.Face((5, 0, 10, 10))]) == [0]  # IoU 1/3 >= 0.3
    assert tracker.update(2, [faces.Face((11, 0, 10, 10))]) == [1]  # IoU 1/4 < 0.3


def test_iou_tracker_counts_missed_frames_in_processed_frames():
    """predict --frame_step=20: the same face every 20th decoded frame is one track."""
    tracker = faces.IouTracker(max_missed=2, frame_step=20)
    face = faces.Face((0, 0, 50, 50))
    assert [tracker.update(frame, [face])[0] for frame in (0, 20, 40, 80)] == [0, 0, 0, 0]
    assert tracker.update(160, [face]) == [1]  # 3 processed frames unseen: a new track


def test_detector_specs(tmp_path):
    with pytest.raises(faces.DetectorError, match="not found"):
        faces.load_detector("yunet:/nonexistent.onnx")
    # What a download of the model can leave instead of it (a Git LFS pointer): one line for
    # predict, not OpenCV's traceback.
    pointer = tmp_path / "face_detection_yunet_2023mar.onnx"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    if hasattr(cv2, "FaceDetectorYN"):
        with pytest.raises(faces.DetectorError, match=r"cannot be loaded by OpenCV .*: download "
                           r"face_detection_yunet_2023mar.onnx itself"):
            faces.load_detector(f"yunet:{pointer}")
        # A valid ONNX model of another network: it loaded, and the first image was OpenCV's
        # traceback in the middle of a run.
        other = tmp_path / "face_recognition_sface_2021dec.onnx"
        other.write_bytes(identity_onnx())
        with pytest.raises(faces.DetectorError, match=r"is an ONNX model but not YuNet's .*: "
                           r"pass --detector=yunet:PATH to face_detection_yunet_2023mar.onnx"):
            faces.load_detector(f"yunet:{other}")
    with pytest.raises(faces.DetectorError, match="Unknown detector"):
        faces.load_detector("nonsense")
    custom = faces.load_detector("test_faces:fixed_detector")
    assert custom(np.zeros((10, 10, 3), np.uint8))[0].box == (1, 2, 3, 4)


@pytest.mark.skipif(not hasattr(cv2, "FaceDetectorYN"), reason="OpenCV without YuNet")
def test_a_yunet_model_on_gs_or_under_home_is_read(bucket, tmp_path, monkeypatch):
    """OpenCV reads local files only: --detector=yunet:gs://... (beside an ensemble and inputs
    on gs://) and yunet:~/... (no shell expands a ~ after 'yunet:') were 'not found'. Either
    is read now: this ONNX model of another network gets as far as its own error."""
    (bucket.root / "sface.onnx").write_bytes(identity_onnx())
    home = tmp_path / "home"
    home.mkdir()
    (home / "sface.onnx").write_bytes(identity_onnx())
    monkeypatch.setenv("HOME", str(home))
    for model in ("gs://test-bucket/sface.onnx", "~/sface.onnx"):
        with pytest.raises(faces.DetectorError) as e:
            faces.load_detector(f"yunet:{model}")
        assert str(e.value).startswith(f"YuNet model file {model!r} is an ONNX model but not "
                                       "YuNet's")
    with pytest.raises(faces.DetectorError) as e:
        faces.load_detector("yunet:gs://test-bucket/missing.onnx")
    assert str(e.value) == ("YuNet model file 'gs://test-bucket/missing.onnx' not found "
                            "(--detector=yunet:PATH).")


def identity_onnx() -> bytes:
    """A minimal valid ONNX model (Identity of a float [1, 3, 32, 32]), encoded by hand (the
    onnx package is not a dependency)."""

    def varint(n):
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def number(field, value):
        return varint(field << 3) + varint(value)

    def message(field, payload):
        payload = payload.encode() if isinstance(payload, str) else payload
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    def tensor(name):
        dims = b"".join(message(1, number(1, d)) for d in (1, 3, 32, 32))
        return message(1, name) + message(2, message(1, number(1, 1) + message(2, dims)))

    node = message(1, "x") + message(2, "y") + message(4, "Identity")
    graph = (message(1, node) + message(2, "g") + message(11, tensor("x"))
             + message(12, tensor("y")))
    return number(1, 7) + message(8, message(1, "") + number(2, 13)) + message(7, graph)


def fixed_detector(image):
    return [faces.Face((1, 2, 3, 4))]


def make_fixed_detector():
    """A factory, as the module docstring allows: a function of no arguments."""
    return fixed_detector


def boxes_detector(image):
    """Boxes as many detectors give them, not Faces."""
    return np.array([[1.0, 2.0, 3.0, 4.0]])


def test_a_factory_function_makes_the_detector_and_a_wrong_answer_is_one_line():
    """A factory function was called with the image (a TypeError traceback mid-run), and a
    detector returning boxes as an array failed with "'numpy.ndarray' has no attribute
    'area'" deep in predict."""
    image = np.zeros((10, 10, 3), np.uint8)
    assert faces.load_detector("test_faces:make_fixed_detector")(image)[0].box == (1, 2, 3, 4)
    with pytest.raises(faces.DetectorError, match=re.escape(
            "--detector=test_faces:boxes_detector returned a numpy array of shape (1, 4), not "
            "a list of cer_jax.faces.Face: wrap each box as Face((x, y, w, h))")):
        faces.load_detector("test_faces:boxes_detector")(image)
    with pytest.raises(faces.DetectorError, match="returned a list holding a tuple, not"):
        faces.load_detector("test_faces:tuples_detector")(image)
    with pytest.raises(faces.DetectorError, match=re.escape(
            "returned a Face whose landmarks have shape (68, 2), not (5, 2)")):
        faces.load_detector("test_faces:dlib_landmarks_detector")(image)
    with pytest.raises(faces.DetectorError, match="is int, not a detector"):
        faces.load_detector("test_faces:NOT_A_DETECTOR")
    with pytest.raises(faces.DetectorError, match=re.escape(
            "--detector=test_faces:NeedsAModel: NeedsAModel cannot be made with no arguments "
            "(missing a required argument: 'model')")):
        faces.load_detector("test_faces:NeedsAModel")


class NeedsAModel:
    def __init__(self, model):
        self.model = model

    def __call__(self, image):
        return []


def tuples_detector(image):
    return [(1, 2, 3, 4)]


def dlib_landmarks_detector(image):
    return [faces.Face((1, 2, 3, 4), landmarks=np.zeros((68, 2)))]


NOT_A_DETECTOR = 3
