"""Bad RAF-DB trees: each gets one clear RafDbLayoutError, and leaves no dataset in data_dir."""

import hashlib
import io
import json
import pathlib
import re
import shutil
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cer_jax import synthetic
from tfds_rafdb import layout, rafdb
from tfds_rafdb.rafdb import rafdb_dataset_builder

LABELS = "EmoLabel/list_patition_label.txt"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("pristine") / "compound"
    synthetic.write_tree(root, kind="compound", num_train_images=22, num_test_images=11, seed=3)
    return root


@pytest.fixture
def tree(pristine, tmp_path) -> pathlib.Path:
    """A fresh copy of a valid compound tree (22 train, 11 test images) to break."""
    return pathlib.Path(shutil.copytree(pristine, tmp_path / "compound"))


def _label_lines(root: pathlib.Path) -> list[str]:
    return (root / LABELS).read_text().splitlines()


def _write_label_lines(root: pathlib.Path, lines: list[str]) -> None:
    (root / LABELS).write_text("\n".join(lines) + "\n")


def _build_fails(manual_dir: pathlib.Path, data_dir: pathlib.Path, config="compound") -> str:
    """Builds, expects RafDbLayoutError, checks nothing was prepared; returns the message."""
    with mock.patch.object(rafdb.Builder, "_generate_examples") as generate:
        with pytest.raises(rafdb.RafDbLayoutError) as error:
            rafdb.build(config, str(manual_dir), str(data_dir))
    generate.assert_not_called()  # the whole tree was checked before any example was made
    assert not (data_dir / "rafdb" / config / "1.0.0").exists()
    # TFDS keeps a dataset-level `rafdb/.config/metadata.json` (not a prepared dataset); any
    # other file (records, dataset_info.json, an `incomplete.*` folder's content) is a leftover.
    leftovers = [p for p in data_dir.rglob("*") if p.is_file() and ".config" not in p.parts]
    assert leftovers == [], f"a failed build left files behind: {leftovers}"
    assert not rafdb.Builder(config=config, data_dir=str(data_dir)).is_prepared()
    return str(error.value)


def test_the_splits_a_split_is_said_to_hold_are_what_it_holds(pristine, tmp_path):
    """layout.SPLITS_WITHIN (fusion's leak report reads it) against the built file names."""
    builder = rafdb.build("compound", str(pristine), str(tmp_path / "data"))
    names = {split: sorted(example["file_name"].decode() for example in tfds.as_numpy(
        builder.as_dataset(split=split))) for split in ("train", "train_fit", "validation")}
    for whole, parts in layout.SPLITS_WITHIN.items():
        assert names[whole] == sorted(name for part in parts for name in names[part])


def test_missing_label_file_shows_layout_and_flag(tree, tmp_path):
    (tree / LABELS).unlink()
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(f"RAF-DB tree at {tree} is missing {LABELS}.\n")
    assert layout.EXPECTED_LAYOUT in message
    assert "--manual_dir" in message


def test_a_label_file_with_partition_spelt_right_says_rename(tree, tmp_path):
    """Before: only "is missing EmoLabel/list_patition_label.txt", one letter from the file
    that is there."""
    (tree / LABELS).rename(tree / "EmoLabel/list_partition_label.txt")
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(
        f"RAF-DB tree at {tree} is missing {LABELS}.\n{tree / 'EmoLabel'} holds "
        f"list_partition_label.txt: RAF-DB's label file is {LABELS} (sic, \"patition\"); rename "
        "yours to that name.\n"
    )


def test_a_manual_dir_that_does_not_exist_shows_the_layout(tmp_path):
    message = _build_fails(tmp_path / "nowhere", tmp_path / "data")
    assert message.startswith(f"RAF-DB tree at {tmp_path / 'nowhere'} is missing {LABELS}, "
                              "Image/aligned.\n")
    assert not (tmp_path / "data").exists()  # not even TFDS's empty folders


def test_missing_image_folder(tree, tmp_path):
    shutil.rmtree(tree / "Image/aligned")
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(f"RAF-DB tree at {tree} is missing Image/aligned.\n")


def test_manual_dir_at_the_parent_folder_points_at_the_tree(tree, tmp_path):
    message = _build_fails(tree.parent, tmp_path / "data")
    assert f"{tree.parent} holds compound/: point --manual_dir at one." in message


def test_manual_dir_two_folders_above_the_trees_names_them(tree, tmp_path):
    """RAF-DB's folder unpacked into one of its own (data/RAF-DB/compound). Before: only "is
    missing EmoLabel/list_patition_label.txt, Image/aligned", with the tree right there."""
    data = tmp_path / "data_root"
    (data / "RAF-DB").mkdir(parents=True)
    tree.rename(data / "RAF-DB" / "compound")
    (data / "other").mkdir()
    message = _build_fails(data, tmp_path / "data")
    assert f"\n{data} holds RAF-DB/compound/: point --manual_dir at one.\n" in message


def test_manual_dir_at_the_archive_itself_says_unpack(tree, tmp_path):
    """Before: "RAF-DB tree at compound.zip is missing ...", as if the archive were a folder."""
    archive = shutil.make_archive(str(tmp_path / "compound"), "zip", tree.parent, tree.name)
    message = _build_fails(pathlib.Path(archive), tmp_path / "data")
    assert message.startswith(
        f"RAF-DB tree at {archive} is missing {LABELS}, Image/aligned.\n{archive} is a file, "
        "not a folder: if it is the RAF-DB archive, unpack it and point --manual_dir at the "
        "compound/ (or basic/) folder it holds.\n")


def test_manual_dir_holding_the_packed_archive_says_unpack(tree, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    shutil.make_archive(str(downloads / "compound"), "zip", tree.parent, tree.name)
    message = _build_fails(downloads, tmp_path / "data")
    assert f"\n{downloads} holds compound.zip, not unpacked: unpack it and point --manual_dir " \
        "at the compound/ (or basic/) folder it holds.\n" in message


@pytest.mark.parametrize("inside", ["Image", "Image/aligned", "EmoLabel"])
def test_manual_dir_inside_the_tree_points_at_the_tree(tree, tmp_path, inside):
    message = _build_fails(tree / inside, tmp_path / "data")
    assert message.startswith(f"RAF-DB tree at {tree / inside} is missing ")
    hint = f"{tree / inside} is inside the tree {tree}: point --manual_dir at {tree}."
    assert f"\n{hint}\n" in message


def test_a_still_zipped_aligned_folder_says_unzip(tree, tmp_path):
    shutil.make_archive(str(tree / "Image/aligned"), "zip", tree / "Image", "aligned")
    shutil.rmtree(tree / "Image/aligned")
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(
        f"RAF-DB tree at {tree} is missing Image/aligned.\n{tree / 'Image/aligned'}.zip is still "
        f"zipped: unzip it so that {tree / 'Image/aligned'}/ holds the <stem>_aligned.jpg "
        "images.\n")


def test_aligned_images_without_the_aligned_suffix_say_rename(tree, tmp_path):
    for path in (tree / "Image/aligned").iterdir():
        path.rename(path.with_name(path.name.replace("_aligned", "")))
    message = _build_fails(tree, tmp_path / "data")
    assert message.endswith(
        f"Expected <stem>_aligned.jpg for each listed <stem>.jpg. {tree / 'Image/aligned'} holds "
        f"{_label_lines(tree)[0].split()[0]} instead: rename the aligned images to "
        "<stem>_aligned.jpg, as RAF-DB releases them.")


def test_aligned_images_with_an_upper_case_extension_say_rename(tree, tmp_path):
    """Before: only "33 image(s) listed ... are missing", with the images right there as .JPG
    (an archive unpacked on a case-insensitive disk, then copied to Linux)."""
    aligned = tree / "Image/aligned"
    for path in aligned.iterdir():
        path.rename(path.with_suffix(".JPG"))
    message = _build_fails(tree, tmp_path / "data")
    assert message.endswith(
        f"Expected <stem>_aligned.jpg for each listed <stem>.jpg. {aligned} holds "
        "train_0001_aligned.JPG instead, and file names are case-sensitive here: rename the "
        "aligned images to <stem>_aligned.jpg, lower-case as RAF-DB releases them."
    )


def test_aligned_images_one_folder_too_deep_say_move_them_up(tree, tmp_path):
    """aligned.zip unzipped inside Image/aligned/ (Image/aligned/aligned/*.jpg). Before: only
    "33 image(s) listed ... are missing"."""
    aligned = tree / "Image/aligned"
    aligned.rename(tree / "Image/unzipped")
    aligned.mkdir()
    (tree / "Image/unzipped").rename(aligned / "aligned")
    message = _build_fails(tree, tmp_path / "data")
    assert message.endswith(
        f"Expected <stem>_aligned.jpg for each listed <stem>.jpg. The images are one folder "
        f"deeper, in {aligned / 'aligned'}: move them up into {aligned}."
    )


def test_unparsable_label_line_names_file_and_line(tree, tmp_path):
    lines = _label_lines(tree)
    lines[2] = lines[2].split()[0]  # label missing
    _write_label_lines(tree, lines)
    message = _build_fails(tree, tmp_path / "data")
    assert message == (f'{tree / LABELS}, line 3: expected "<name>.jpg <label>", got {lines[2]!r}.')


@pytest.mark.parametrize("bad_label", [0, 12])
def test_label_out_of_range(tree, tmp_path, bad_label):
    lines = _label_lines(tree)
    name = lines[4].split()[0]
    lines[4] = f"{name} {bad_label}"
    _write_label_lines(tree, lines)
    message = _build_fails(tree, tmp_path / "data")
    assert message == (
        f"{tree / LABELS}, line 5: label {bad_label} of {name} is out of range: the compound "
        "tree has ids 1..11."
    )


@pytest.mark.parametrize("bad_name", [
    "val_0001.jpg",  # no split prefix
    "train_\u0661\u0662\u0663\u0664.jpg",  # Arabic-Indic digits, which int() would read
])
def test_an_image_name_that_is_not_split_and_ascii_digits_is_refused(tree, tmp_path, bad_name):
    lines = _label_lines(tree)
    lines[0] = f"{bad_name} 1"
    _write_label_lines(tree, lines)
    message = _build_fails(tree, tmp_path / "data")
    assert message == (
        f"{tree / LABELS}, line 1: image name {bad_name!r} must look like train_0001.jpg or "
        "test_0001.jpg (the prefix gives the split)."
    )


def test_basic_tree_given_to_a_compound_config(tmp_path):
    basic = tmp_path / "basic"
    synthetic.write_tree(basic, kind="basic", num_train_images=14, num_test_images=7, seed=0)
    message = _build_fails(basic, tmp_path / "data", config="compound_abaw7")
    assert message.endswith(
        "line 1: train_00001.jpg has 5 digits, but the compound tree numbers train images with "
        "4: is --manual_dir the basic tree?"
    )


def test_compound_tree_given_to_the_basic_config_with_a_test_line_first(tree, tmp_path):
    """Test ids have 4 digits in both trees, so the label is the first sign of the wrong tree.
    Before: the range error without the hint the other direction gets."""
    lines = _label_lines(tree)
    test_lines = [x for x in lines if x.startswith("test_")]
    first = next(x for x in test_lines if int(x.split()[1]) >= 8)
    _write_label_lines(tree, [first] + [x for x in lines if x != first])
    message = _build_fails(tree, tmp_path / "data", config="basic")
    assert message == (
        f"{tree / LABELS}, line 1: label {first.split()[1]} of {first.split()[0]} is out of "
        "range: the basic tree has ids 1..7: is --manual_dir the compound tree?"
    )


@pytest.mark.parametrize("label", ["\u00b2", "\u0661"])  # superscript two, Arabic-Indic one
def test_a_label_of_non_ascii_digits_is_one_line(tree, tmp_path, label):
    """Before: "²".isdigit() let int() raise a bare ValueError; "١" was read as label 1."""
    lines = _label_lines(tree)
    lines[2] = f"{lines[2].split()[0]} {label}"
    _write_label_lines(tree, lines)
    message = _build_fails(tree, tmp_path / "data")
    assert message == f'{tree / LABELS}, line 3: expected "<name>.jpg <label>", got {lines[2]!r}.'


def test_test_ids_must_have_four_digits(tree, tmp_path):
    lines = _label_lines(tree)
    line = next(i for i, x in enumerate(lines) if x.startswith("test_0001.jpg"))
    lines[line] = "test_00001.jpg " + lines[line].split()[1]
    _write_label_lines(tree, lines)
    message = _build_fails(tree, tmp_path / "data")
    assert message == (
        f"{tree / LABELS}, line {line + 1}: test_00001.jpg has 5 digits, but the compound tree "
        "numbers test images with 4."
    )


def test_duplicate_entry_names_both_lines(tree, tmp_path):
    lines = _label_lines(tree)
    lines.append(lines[1])
    _write_label_lines(tree, lines)
    name = lines[1].split()[0]
    message = _build_fails(tree, tmp_path / "data")
    assert message == (
        f"{tree / LABELS}: duplicate entry {name} on lines 2 and {len(lines)}; keep one."
    )


def test_listed_image_missing(tree, tmp_path):
    (tree / "Image/aligned/test_0005_aligned.jpg").unlink()
    line = next(i for i, x in enumerate(_label_lines(tree), 1) if x.startswith("test_0005"))
    message = _build_fails(tree, tmp_path / "data")
    assert message == (
        f"1 image(s) listed in {tree / LABELS} are missing from {tree / 'Image/aligned'}: "
        f"test_0005.jpg (line {line}). Expected <stem>_aligned.jpg for each listed <stem>.jpg."
    )


def _fix(tree: pathlib.Path, line: int) -> str:
    return f"re-extract it from the RAF-DB archive, or remove line {line} of {tree / LABELS}."


def test_a_png_saved_as_jpg_is_reencoded(tree, tmp_path, capsys):
    """Before: refused as "is not a JPEG file", though a greyscale or CMYK JPEG is re-encoded."""
    path = tree / "Image/aligned/train_0007_aligned.jpg"
    Image.new("RGBA", (120, 120), (200, 30, 60, 255)).save(path, format="PNG")
    builder = rafdb.build("compound", str(tree), str(tmp_path / "data"))
    # TFDS's own lines said "Downloading and preparing dataset Unknown size (download: ...)".
    printed = capsys.readouterr().out
    assert "ownload" not in printed.replace("nothing is downloaded", "")
    assert f"Preparing rafdb/compound/1.0.0 from --manual_dir (nothing is downloaded) in " \
        f"{builder.data_dir} ..." in printed
    (example,) = [ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))
                  if ex["file_name"] == b"train_0007.jpg"]
    assert example["image"].shape == (100, 100, 3)
    assert np.abs(example["image"].astype(int) - (200, 30, 60)).max() <= 8  # JPEG's error


def test_an_empty_image_says_what_to_do(tree, tmp_path):
    path = tree / "Image/aligned/train_0007_aligned.jpg"
    path.write_bytes(b"")
    message = _build_fails(tree, tmp_path / "data")
    assert message == f"{path} (listed as train_0007.jpg, line 7) is empty: {_fix(tree, 7)}"


def test_a_file_that_is_no_image_says_what_to_do(tree, tmp_path):
    path = tree / "Image/aligned/train_0007_aligned.jpg"
    path.write_bytes(b"<html>404 Not Found</html>\n")  # a failed download, say
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(
        f"{path} (listed as train_0007.jpg, line 7) is not an image Pillow can read (")
    assert message.endswith(f"): {_fix(tree, 7)}") and "\n" not in message


def test_corrupt_jpeg_last_in_the_list(tree, tmp_path):
    """The truncated image is the last one listed: still caught before any example is made."""
    name = _label_lines(tree)[-1].split()[0]
    path = tree / "Image/aligned" / name.replace(".jpg", "_aligned.jpg")
    data = io.BytesIO()
    Image.new("RGB", (100, 100), "red").save(data, format="JPEG")
    path.write_bytes(data.getvalue()[:300])
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(f"{path} (listed as {name}, line 33) is a corrupt JPEG (")
    assert message.endswith(f"): {_fix(tree, 33)}")


def test_a_jpeg_without_its_end_marker_is_refused_though_pillow_reads_it(tree, tmp_path):
    """Before: Pillow decoded it, the build stored it, and training stopped at its first batch
    with TensorFlow's traceback ("jpeg::Uncompress failed"), naming no file."""
    import tensorflow as tf

    path = tree / "Image/aligned/train_0004_aligned.jpg"
    noise = (np.random.default_rng(0).random((100, 100, 3)) * 255).astype(np.uint8)
    data = io.BytesIO()
    Image.fromarray(noise).save(data, format="JPEG", quality=95)
    path.write_bytes(data.getvalue()[:-2] + b"\0\0")  # the end-of-image marker zeroed
    with Image.open(path) as image:
        image.load()  # Pillow: fine
    with pytest.raises(tf.errors.InvalidArgumentError):  # the pipeline's decoder: not
        tf.io.decode_jpeg(path.read_bytes(), channels=3, dct_method="INTEGER_ACCURATE")
    message = _build_fails(tree, tmp_path / "data")
    assert message == (f"{path} (listed as train_0004.jpg, line 4) is a corrupt JPEG (its data "
                       f"ends without the end-of-image marker: cut short?): {_fix(tree, 4)}")


def test_a_jpeg_that_only_pillow_decodes_is_refused(tree, tmp_path):
    """A stray marker in the scan data (a comment whose length runs past the end of the file).
    Before: stored, and training stopped at its first batch with TensorFlow's traceback."""
    import tensorflow as tf

    path = tree / "Image/aligned/test_0002_aligned.jpg"
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + b"\xff\xfe\xff\xff" + data[middle + 4:])
    with Image.open(path) as image:
        image.load()  # Pillow: fine
    with pytest.raises(tf.errors.InvalidArgumentError):  # the pipeline's decoder: not
        tf.io.decode_jpeg(path.read_bytes(), channels=3, dct_method="INTEGER_ACCURATE")
    line = next(i for i, x in enumerate(_label_lines(tree), 1) if x.startswith("test_0002"))
    message = _build_fails(tree, tmp_path / "data")
    assert message == (f"{path} (listed as test_0002.jpg, line {line}) is a corrupt JPEG (Pillow "
                       f"reads it, TensorFlow, which training decodes with, does not): "
                       f"{_fix(tree, line)}")


@pytest.mark.parametrize("what", ["label file", "image", "landmark file"])
def test_a_file_that_cannot_be_read_is_one_line(tree, tmp_path, what):
    """Unreadable (its permissions: RAF-DB unpacked by another user, say; here a folder in its
    place, as the tests may run as root). Before: IsADirectoryError / PermissionError's
    traceback, out of the builder and the trainer alike."""
    path = {"label file": tree / LABELS,
            "image": tree / "Image/aligned/train_0005_aligned.jpg",
            "landmark file": tree / "Annotation/manual/train_0005_manu_attri.txt"}[what]
    path.unlink()
    path.mkdir()
    message = _build_fails(tree, tmp_path / "data")
    fix = {"label file": "",
           "image": f", re-extract it from the RAF-DB archive, or remove line 5 of {tree / LABELS}",
           "landmark file": ", or delete it (images without it get has_landmarks=False)"}[what]
    assert message == (f"{path} cannot be read (Is a directory): it must be a file you can read "
                       f"(check its permissions){fix}.")


def test_an_unreadable_label_file_beside_a_finished_build_is_one_line(tree, tmp_path):
    data_dir = tmp_path / "data"
    rafdb.build("compound", str(tree), str(data_dir))
    (tree / LABELS).unlink()
    (tree / LABELS).mkdir()
    with pytest.raises(rafdb.RafDbLayoutError) as error:
        rafdb.build("compound", str(tree), str(data_dir))
    assert str(error.value) == (f"{tree / LABELS} cannot be read (Is a directory): it must be a "
                                "file you can read (check its permissions).")


def test_bad_landmark_line(tree, tmp_path):
    path = tree / "Annotation/manual/train_0003_manu_attri.txt"
    lines = path.read_text().splitlines()
    lines[3] = "12.5"
    path.write_text("\n".join(lines) + "\n")
    message = _build_fails(tree, tmp_path / "data")
    assert message == (
        f"{path}, line 4: expected a landmark \"x<TAB>y\", got '12.5'. Fix or delete the file "
        "(images without it get has_landmarks=False)."
    )


def test_empty_label_file(tree, tmp_path):
    (tree / LABELS).write_text("\n")
    message = _build_fails(tree, tmp_path / "data")
    assert re.match(rf"{re.escape(str(tree / LABELS))} lists no images\.\n", message)


@pytest.mark.parametrize("kept, config, expected", [
    ("train_", "compound", "lists no test image (test_0001.jpg, ...), so the test split would "
     "be empty: RAF-DB's label file lists both splits; list those images too."),
    ("test_", "compound", "lists no train image (train_0001.jpg, ...), so the train split would "
     "be empty: RAF-DB's label file lists both splits; list those images too."),
    ("test_", "compound_abaw7", "lists no train image of the classes rafdb/compound_abaw7 keeps "
     "(train_0001.jpg, ...), so the train split would be empty"),
    ("one per class", "compound", ": no class has 2 or more train images, so the validation "
     "split (~10 % of each class's train images, held out) would be empty: list more train "
     "images."),
], ids=["no_test", "no_train", "abaw7_no_train", "no_validation"])
def test_a_split_that_would_be_empty_is_one_line_before_writing(tree, tmp_path, kept, config,
                                                                expected):
    """TFDS wrote the other splits, then stopped with 'AssertionError: Failed to finalize
    writing of split "test": No examples were yielded.' and a traceback."""
    lines = _label_lines(tree)
    if kept == "one per class":
        first = {}
        for line in lines:
            if line.startswith("train_"):
                first.setdefault(line.split()[1], line)
        lines = [*first.values(), *(line for line in lines if line.startswith("test_"))]
    else:
        lines = [line for line in lines if line.startswith(kept)]
    _write_label_lines(tree, lines)
    message = _build_fails(tree, tmp_path / "data", config)
    assert message.startswith(f"{tree / LABELS}{'' if expected[0] == ':' else ' '}{expected}")


def test_failure_while_writing_leaves_no_dataset(tree, tmp_path):
    """A file that vanishes after validation fails the build midway; TFDS keeps nothing of it."""
    read = rafdb_dataset_builder._jpeg_bytes
    calls = []

    def vanishing(record):
        calls.append(record.file_name)
        if len(calls) == 5:
            raise FileNotFoundError(f"{record.aligned_path} vanished")
        return read(record)

    data_dir = tmp_path / "data"
    with mock.patch.object(rafdb_dataset_builder, "_jpeg_bytes", side_effect=vanishing):
        with pytest.raises(FileNotFoundError, match="vanished"):
            rafdb.build("compound", str(tree), str(data_dir))
    assert len(calls) == 5  # four examples had been written before the failure
    assert not (data_dir / "rafdb/compound/1.0.0").exists()
    assert not list(data_dir.rglob("*.tfrecord*")) and not list(data_dir.rglob("incomplete*"))
    assert not rafdb.Builder(config="compound", data_dir=str(data_dir)).is_prepared()


def test_a_label_file_saved_with_a_byte_order_mark_and_crlf_parses_the_same(tree):
    """As Windows editors save it."""
    expected = layout.parse_label_file(tree, 11, "compound")
    text = (tree / LABELS).read_text()
    (tree / LABELS).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert layout.parse_label_file(tree, 11, "compound") == expected


def test_blank_lines_and_tab_separators_parse_the_same(tree):
    """Pins: a trailing blank line (or a whitespace-only one) and a tab for the space."""
    expected = layout.parse_label_file(tree, 11, "compound")
    lines = [x.replace(" ", "\t") for x in _label_lines(tree)]
    (tree / LABELS).write_text("\n".join(lines[:3] + ["", " \t"] + lines[3:]) + "\n\n\n")
    got = layout.parse_label_file(tree, 11, "compound")
    assert [entry[:2] for entry in got] == [entry[:2] for entry in expected]
    assert got[3][2] == 6  # line numbers still count the blank lines


def test_a_label_file_that_is_not_text_names_the_file(tree, tmp_path):
    (tree / LABELS).write_bytes(b"train_0001.jpg \xff\xfe 1\n")
    message = _build_fails(tree, tmp_path / "data")
    assert message.startswith(f"{tree / LABELS}: not a UTF-8 text file (")


def _harmless_edit(root: pathlib.Path) -> None:
    """The same labels as a Windows editor might save them: BOM, CRLF, trailing spaces, and
    another line order."""
    lines = [f"{x}  " for x in reversed(_label_lines(root))]
    (root / LABELS).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")


def _relabel_one(root: pathlib.Path) -> None:
    lines = _label_lines(root)
    name, label = lines[0].split()
    lines[0] = f"{name} {int(label) % 11 + 1}"
    _write_label_lines(root, lines)


def _mismatch(data_dir: pathlib.Path, tree: pathlib.Path) -> str:
    built = data_dir / "rafdb/compound/1.0.0"
    return (f"{built} holds rafdb/compound built from another tree than {tree} (its {LABELS} "
            f"differs). Delete {built} to build it from {tree}, or give another data_dir.")


def test_a_build_is_kept_after_an_edit_that_leaves_the_labels_the_same(tree, tmp_path):
    """Before: the label file's raw bytes were the fingerprint, so a CRLF re-save refused a good
    build as "built from another tree"."""
    data_dir = tmp_path / "data"
    rafdb.build("compound", str(tree), str(data_dir))
    _harmless_edit(tree)
    with mock.patch.object(rafdb.Builder, "_generate_examples") as generate:
        builder = rafdb.build("compound", str(tree), str(data_dir))  # reused, not rebuilt
    generate.assert_not_called()
    assert builder.info.splits["train"].num_examples == 22
    _relabel_one(tree)  # a real change of the labels is still caught
    with pytest.raises(rafdb.SourceMismatchError) as e:
        rafdb.build("compound", str(tree), str(data_dir))
    assert str(e.value) == _mismatch(data_dir, tree)


def test_images_replaced_under_the_same_labels_are_not_served_from_the_old_build(tree, tmp_path):
    """Before: only the labels were the fingerprint, so re-aligned (or re-extracted) images under
    the same label file silently trained on the old build's images."""
    data_dir = tmp_path / "data"
    rafdb.build("compound", str(tree), str(data_dir))
    copy = pathlib.Path(shutil.copytree(tree, tmp_path / "copy"))  # new mtimes, same images
    with mock.patch.object(rafdb.Builder, "_generate_examples") as generate:
        rafdb.build("compound", str(copy), str(data_dir))  # reused, not rebuilt
    generate.assert_not_called()
    path = copy / "Image/aligned/train_0003_aligned.jpg"
    noise = (np.random.default_rng(1).random((100, 100, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=90)  # another face, same name
    built = data_dir / "rafdb/compound/1.0.0"
    with pytest.raises(rafdb.SourceMismatchError) as e:
        rafdb.build("compound", str(copy), str(data_dir))
    assert str(e.value) == (
        f"{built} holds rafdb/compound built from another tree than {copy} (same labels, but "
        "its Image/aligned images differ in size: replaced since the build?). Delete "
        f"{built} to build it from {copy}, or give another data_dir.")
    metadata = built / "metadata.json"  # a build from before the sizes: still accepted
    metadata.write_text(json.dumps({"labels_sha256": json.loads(metadata.read_text())[
        "labels_sha256"]}))
    rafdb.build("compound", str(copy), str(data_dir))


def test_a_build_with_the_old_raw_bytes_fingerprint_is_still_accepted(tree, tmp_path):
    """A build made before the parsed-labels fingerprint holds only the label file's sha256:
    an upgrade must not ask to delete it while those bytes are the same."""
    data_dir = tmp_path / "data"
    rafdb.build("compound", str(tree), str(data_dir))
    metadata = data_dir / "rafdb/compound/1.0.0/metadata.json"
    assert list(json.loads(metadata.read_text())) == [  # what new builds record
        "labels_sha256", "image_sizes_sha256"]
    raw = hashlib.sha256((tree / LABELS).read_bytes()).hexdigest()
    metadata.write_text(json.dumps({"label_file_sha256": raw}))  # as the old builder wrote it
    with mock.patch.object(rafdb.Builder, "_generate_examples") as generate:
        rafdb.build("compound", str(tree), str(data_dir))
    generate.assert_not_called()
    _relabel_one(tree)
    with pytest.raises(rafdb.SourceMismatchError) as e:
        rafdb.build("compound", str(tree), str(data_dir))
    assert str(e.value) == _mismatch(data_dir, tree)
