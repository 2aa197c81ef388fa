"""Input pipeline on a small synthetic RAF-DB (built once) and on a tiny image-folder tree."""

import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from cer_jax import synthetic
from cer_jax.data import DataConfigError, dataset_defaults, input_defaults, pipeline

SIZE = 32
NUM_CLASSES = 11
# Where the synthetic tree of _config() is cached: keyed on its sizes, seed and generator version.
TREE = f"compound-40-20-seed0-v{synthetic.VERSION}"


def _config(cache_dir, **input_overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = dataset_defaults()
    c.dataset.synthetic = True
    c.dataset.synthetic_num_train_images = 40
    c.dataset.synthetic_num_test_images = 20
    c.dataset.cache_dir = str(cache_dir)
    c.input = input_defaults()
    c.input.image_size, c.input.resize_size = SIZE, 36
    c.input.update(input_overrides)
    return c


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cer_jax_cache")


@pytest.fixture(scope="module")
def info(cache_dir):
    return pipeline.get_dataset_info(_config(cache_dir))


def _tree_labels(cache_dir) -> dict[str, int]:
    """File name -> 0-based label, read straight from the synthetic tree's label file."""
    root = os.path.join(cache_dir, "synthetic", TREE)
    lines = open(os.path.join(root, "EmoLabel", "list_patition_label.txt")).read().split("\n")
    return {n: int(y) - 1 for n, y in (line.split() for line in lines if line)}


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_info_describes_the_synthetic_dataset(info, cache_dir):
    assert info.name == "rafdb/compound"
    assert info.num_classes == NUM_CLASSES == len(info.class_names)
    assert info.class_names[0] == "Happily Surprised"
    sizes = info.split_sizes
    assert sizes["train"] == 40 and sizes["test"] == 20
    assert sizes["train_fit"] + sizes["validation"] == 40 and sizes["validation"] > 0


@pytest.mark.parametrize(
    "normalization, lo, hi",
    [("unit", 0.0, 1.0), ("minus_one_one", -1.0, 1.0), ("imagenet", -2.12, 2.64)],
)
def test_train_batches_shapes_dtypes_and_ranges(cache_dir, info, normalization, lo, hi):
    config = _config(cache_dir, normalization=normalization, color_jitter=(0.5, 0.5, 0.5, 0.1))
    batch = next(pipeline.train_iterator(config, info, global_batch_size=8, seed=0))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert lo <= batch["image"].min() < batch["image"].max() <= hi
    assert batch["image"].max() - batch["image"].min() > 0.3 * (hi - lo)
    assert ((batch["label"] >= 0) & (batch["label"] < NUM_CLASSES)).all()


def _augmented(cache_dir):
    return _config(
        cache_dir,
        color_jitter=(0.5, 0.5, 0.5, 0.1),
        affine=dict(prob=0.5, degrees=15.0, translate=0.1, scale=(0.9, 1.1), shear=10.0),
        blur=dict(prob=0.5, sigma=(0.1, 2.0), kernel=5),
        random_erasing=dict(prob=0.5, area=(0.02, 0.33), ratio=(0.3, 3.3)),
    )


@pytest.mark.parametrize("balance, cache", [("none", True), ("sampling", False)])
def test_resuming_reproduces_the_tail_exactly(cache_dir, info, balance, cache):
    config = _augmented(cache_dir) if balance == "none" else _config(cache_dir)
    config.input.update(balance=balance, cache=cache)
    # train_fit has 29 examples: step 5 of batch 8 starts inside the second epoch.
    full = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=3), 8)
    resumed = pipeline.train_iterator(config, info, global_batch_size=8, seed=3, start_step=5)
    tail = _take(resumed, 3)
    for a, b in zip(full[5:], tail, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_deterministic_for_a_seed_and_different_for_another(cache_dir, info):
    config = _augmented(cache_dir)
    a = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=0), 2)
    b = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=0), 2)
    c = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=1), 2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert not np.array_equal(
        np.concatenate([x["label"] for x in a]), np.concatenate([x["label"] for x in c])
    )


def test_each_epoch_visits_every_training_example_once(cache_dir, info):
    config = _config(cache_dir)
    n = info.split_sizes["train_fit"]
    batches = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=0), 8)
    labels = np.concatenate([b["label"] for b in batches])
    expected = sorted(pipeline.open_source(config.dataset).labels("train_fit"))
    assert sorted(labels[:n]) == expected
    assert sorted(labels[n : 2 * n]) == expected
    assert not np.array_equal(labels[:n], labels[n : 2 * n])  # reshuffled per epoch


def test_eval_covers_every_example_once_with_masks_and_names(cache_dir, info):
    config = _config(cache_dir, normalization="unit", eval_resize="resize", image_size=100)
    truth = _tree_labels(cache_dir)
    batches = list(pipeline.eval_iterator(config, info, "test", global_batch_size=8))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    names = np.concatenate([b["file_name"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.tolist() == [True] * 20 + [False] * 4
    assert sorted(names[:20]) == [f"test_{i:04d}.jpg" for i in range(1, 21)]
    assert names[20:].tolist() == [""] * 4
    assert labels[:20].tolist() == [truth[n] for n in names[:20]]
    assert batches[0]["image"].shape == (8, 100, 100, 3)
    assert not batches[-1]["image"][4:].any()  # padding is zeros
    # The image is the aligned JPEG itself (decoded independently with Pillow).
    root = os.path.join(cache_dir, "synthetic", TREE, "Image", "aligned")
    ref = np.asarray(Image.open(os.path.join(root, names[0].replace(".jpg", "_aligned.jpg"))))
    diff = np.abs(batches[0]["image"][0] - ref / 255.0)  # JPEG decoders differ slightly
    assert diff.mean() < 2 / 255 and diff.max() < 12 / 255
    # Deterministic order.
    again = next(pipeline.eval_iterator(config, info, "test", global_batch_size=8))
    assert again["file_name"].tolist() == batches[0]["file_name"].tolist()


# ---------------------------------------------------------------------------------------------
# Several hosts, computed in one process (jax.process_count / process_index patched).

IMBALANCED = {"a_many": 36, "b_some": 12, "c_few": 6}  # class folder -> training images


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory):
    """A train/test image folder whose classes are 6:2:1, each image a distinct flat colour."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(0)
    for split, scale in (("train", 1), ("test", 0.5)):
        for name, count in IMBALANCED.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(int(count * scale)):
                pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (12, 12, 3))
                Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:03d}.png")
    return root


def _folder_config(root, **input_overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.dataset = dataset_defaults()
    c.dataset.update(name="folder", folder=str(root), train_split="train", eval_splits=("test",))
    c.input = input_defaults()
    c.input.update(image_size=8, resize_size=10, train_resize="resize_crop", eval_resize="resize")
    c.input.update(input_overrides)
    return c


def _hosts(monkeypatch, count: int):
    """Yields each host index of a `count`-host run with jax patched to be that host."""
    monkeypatch.setattr(jax, "process_count", lambda: count)
    for index in range(count):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        yield index


@pytest.mark.parametrize("num_shards", [1, 2, 4, 7])
def test_shards_are_disjoint_cover_the_split_and_hold_every_class_in_proportion(num_shards):
    labels = np.random.default_rng(num_shards).integers(0, 5, 103)
    shards = pipeline.shard_indices(labels, num_shards)
    assert len(shards) == num_shards
    everything = np.concatenate(shards)
    assert sorted(everything.tolist()) == list(range(len(labels)))  # disjoint and covering
    for shard in shards:
        assert np.all(np.diff(shard) > 0)  # stored order
    per_class = np.stack([np.bincount(labels[s], minlength=5) for s in shards])
    assert np.all(per_class.max(0) - per_class.min(0) <= 1), per_class
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("balance", ["none", "sampling"])
@pytest.mark.parametrize("hosts", [2, 4])
def test_global_batches_are_the_same_on_any_number_of_hosts(
    imbalanced_folder, monkeypatch, balance, hosts
):
    config = _folder_config(imbalanced_folder, balance=balance, num_data_shards=4)
    config.input.update(flip=True, color_jitter=(0.4, 0.4, 0.4, 0.1))
    info = pipeline.get_dataset_info(config)

    def steps(start_step=0):
        stream = pipeline.train_iterator(
            config, info, global_batch_size=8, seed=5, start_step=start_step)
        return _take(stream, 6)

    one_host = steps()
    per_host = [steps() for _ in _hosts(monkeypatch, hosts)]
    for step, reference in enumerate(one_host):
        for key in ("image", "label"):
            together = np.concatenate([batches[step][key] for batches in per_host])
            np.testing.assert_array_equal(together, reference[key])
    resumed = [steps(start_step=4)[:2] for _ in _hosts(monkeypatch, hosts)]  # 4 hosts resume
    for step, reference in enumerate(one_host[4:]):
        together = np.concatenate([batches[step]["image"] for batches in resumed])
        np.testing.assert_array_equal(together, reference["image"])


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_class_balanced_sampling_is_uniform_whatever_the_host_count(
    imbalanced_folder, monkeypatch, hosts
):
    config = _folder_config(imbalanced_folder, balance="sampling")  # one shard per host
    info = pipeline.get_dataset_info(config)
    labels = []
    for _ in _hosts(monkeypatch, hosts):
        stream = pipeline.train_iterator(config, info, global_batch_size=16, seed=0)
        labels.extend(np.concatenate([b["label"] for b in _take(stream, 75)]).tolist())
    freq = np.bincount(labels, minlength=3) / len(labels)  # 1,200 draws: sd 0.014
    np.testing.assert_allclose(freq, 1 / 3, atol=0.05)


def test_uncached_class_balanced_sampling_reads_each_class_alone(imbalanced_folder,
                                                                 monkeypatch):
    """input.cache=False (README's advice for large photos) with balance='sampling': each
    class's stream filtered the whole shard, decoding every image once per class pass (800 px
    photos of RAF-DB compound's 11 classes: an epoch 7x slower than balance='none'). It reads
    its own class's images only, and the stream is the cached one's."""
    from cer_jax.data import sources

    config = _folder_config(imbalanced_folder, balance="sampling", cache=False,
                            num_data_shards=2)
    info = pipeline.get_dataset_info(config)
    labels = sources.FolderSource(config.dataset).labels("train")
    reads, examples = [], sources.FolderSource.examples

    def recorded(self, split, indices):
        reads.append(np.unique(labels[indices]).tolist())
        return examples(self, split, indices)

    monkeypatch.setattr(sources.FolderSource, "examples", recorded)
    uncached = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=1,
                                             start_step=9), 12)
    assert sorted(r for r in reads if len(r) == 1) == [[0], [0], [1], [1], [2], [2]], reads
    config.input.cache = True
    cached = _take(pipeline.train_iterator(config, info, global_batch_size=8, seed=1,
                                           start_step=9), 12)
    for got, want in zip(uncached, cached, strict=True):
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["image"], want["image"])


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_hosts_eval_slices_are_every_example_once(imbalanced_folder, monkeypatch, hosts):
    config = _folder_config(imbalanced_folder)
    info = pipeline.get_dataset_info(config)
    names, batch_counts = [], []
    for _ in _hosts(monkeypatch, hosts):
        batches = list(pipeline.eval_iterator(config, info, "test", global_batch_size=8))
        batch_counts.append(len(batches))
        assert all(b["image"].shape[0] == 8 // hosts for b in batches)
        names.extend(n for b in batches for n in b["file_name"][b["mask"]])
    assert len(set(batch_counts)) == 1  # multi-host steps need equal counts
    expected = sorted(f"{c}/{i:03d}.png" for c, n in IMBALANCED.items() for i in range(n // 2))
    assert sorted(names) == expected  # each exactly once


def test_shard_errors_name_the_key_and_the_fix(imbalanced_folder, monkeypatch):
    config = _folder_config(imbalanced_folder, balance="sampling", num_data_shards=8)
    info = pipeline.get_dataset_info(config)
    with pytest.raises(DataConfigError) as before_training:
        pipeline.validate_splits(config, info, ["train"])  # the trainer's check, before work
    with pytest.raises(DataConfigError) as e:
        pipeline.train_iterator(config, info, global_batch_size=8, seed=0)
    assert str(before_training.value) == str(e.value)
    assert str(e.value) == (
        "config.input.balance='sampling' needs every class in each of the 8 data shards, but "
        "split 'train' has fewer examples than shards for 'c_few' (6). Lower "
        "config.input.num_data_shards, or use config.input.balance='loss_weights'."
    )
    config.input.num_data_shards = 3
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(DataConfigError, match=r"num_data_shards=3 must be a positive multiple "
                       r"of the 2 processes"):
        pipeline.train_iterator(config, info, global_batch_size=12, seed=0)
    config.input.num_data_shards = 4
    with pytest.raises(DataConfigError, match=r"training.global_batch_size=6 must be a positive "
                       r"multiple of config.input.num_data_shards=4"):
        pipeline.train_iterator(config, info, global_batch_size=6, seed=0)


def test_tfds_source_reads_a_scattered_shard_like_the_whole_split(cache_dir, info):
    source = pipeline.open_source(_config(cache_dir).dataset)
    whole = list(source.examples("train_fit", np.arange(29)).as_numpy_iterator())
    picked = np.asarray([1, 2, 7, 20, 28])
    shard = list(source.examples("train_fit", picked).as_numpy_iterator())
    assert [ex["index"] for ex in shard] == picked.tolist()
    for ex in shard:
        reference = whole[ex["index"]]
        assert ex["file_name"] == reference["file_name"] and ex["label"] == reference["label"]
        np.testing.assert_array_equal(ex["image"], reference["image"])


def test_images_decode_to_the_pixels_prediction_sees(cache_dir, info):
    """The stored JPEGs decode as OpenCV (cer_jax.predict) decodes them, pixel for pixel; TF's
    default DCT is up to ~9 levels off, enough to flip a member's answer."""
    import cv2
    import tensorflow_datasets as tfds

    source = pipeline.open_source(_config(cache_dir).dataset)
    examples = list(source.examples("test", np.arange(20)).as_numpy_iterator())
    stored = source._builder.as_dataset(
        split="test", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    for example, raw in zip(examples, stored.as_numpy_iterator(), strict=True):
        assert example["file_name"] == raw["file_name"]
        bgr = cv2.imdecode(np.frombuffer(raw["image"], np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(example["image"], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def test_file_ids_are_synthesised_without_a_file_key(cache_dir, info, monkeypatch):
    config = _config(cache_dir)
    config.dataset.file_key = ""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    batch = next(pipeline.eval_iterator(config, info, "test", global_batch_size=8))
    assert batch["file_name"].tolist() == [f"test/{i}" for i in range(10, 14)]


def test_class_balanced_sampling_is_roughly_uniform(cache_dir, info):
    config = _config(cache_dir, balance="sampling")
    config.dataset.train_split = "train"
    train_labels = np.asarray(list(_tree_labels(cache_dir).values()))[:40]
    plain = np.bincount(train_labels, minlength=NUM_CLASSES) / 40
    batches = _take(pipeline.train_iterator(config, info, global_batch_size=16, seed=0), 40)
    labels = np.concatenate([b["label"] for b in batches])
    freq = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
    assert np.all(np.abs(freq - 1 / NUM_CLASSES) < 0.045), freq
    assert np.abs(freq - 1 / NUM_CLASSES).max() < 0.5 * np.abs(plain - 1 / NUM_CLASSES).max()


def test_class_weights_are_balanced_inverse_frequency(cache_dir, info):
    config = _config(cache_dir)
    config.dataset.train_split = "train"
    labels = np.asarray([y for n, y in _tree_labels(cache_dir).items() if n.startswith("train")])
    weights = pipeline.class_weights(config, info)
    present = np.unique(labels)
    ref = compute_class_weight("balanced", classes=present, y=labels)
    np.testing.assert_allclose(weights[present], ref, rtol=1e-6)
    assert weights[labels].mean() == pytest.approx(1.0)


def _write_folder(root, splits, classes, size=(12, 10)):
    arrays = {}
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes[split]:
            os.makedirs(root / split / c)
            for i in range(2):
                rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(rgb).save(root / split / c / f"{i}.png")
                arrays[(split, f"{c}/{i}.png")] = rgb
    gray = rng.integers(0, 256, size, dtype=np.uint8)
    Image.fromarray(gray).save(root / splits[0] / classes[splits[0]][0] / "g.png")
    arrays[(splits[0], f"{classes[splits[0]][0]}/g.png")] = np.repeat(gray[..., None], 3, -1)
    return arrays


def test_files_that_are_not_images_are_logged_once_per_run(tmp_path, caplog):
    """A run opens its folder several times (info, training, each evaluation): one warning."""
    from cer_jax.data import sources

    _write_folder(tmp_path, ["train"], {"train": ["a"]})
    (tmp_path / "train" / "a" / "notes.txt").write_text("x")
    (tmp_path / "train" / "a" / "more").mkdir()  # nested images are not read: it says so
    config = ml_collections.ConfigDict({"folder": str(tmp_path)})
    with caplog.at_level("WARNING"):
        for _ in range(3):
            sources.FolderSource(config)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skipped == [f"config.dataset.folder={tmp_path}: 2 file(s) of split 'train' skipped "
                       "(not .jpg/.jpeg/.png/.bmp/.gif): a/more/ (a folder: not read), "
                       "a/notes.txt"]


def test_a_rafdb_tree_as_the_folder_says_how_to_read_it(tmp_path):
    """A RAF-DB tree given as config.dataset.folder read Annotation/ as a split: "split folder
    'Annotation' holds no images in its class folders"."""
    from cer_jax import synthetic
    from cer_jax.data import sources

    synthetic.write_tree(tmp_path / "compound", num_train_images=22, num_test_images=11)
    with pytest.raises(DataConfigError) as e:
        sources.FolderSource(ml_collections.ConfigDict({"folder": str(tmp_path / "compound")}))
    assert str(e.value) == (
        f"config.dataset.folder={str(tmp_path / 'compound')!r} is a RAF-DB tree "
        "(EmoLabel/list_patition_label.txt), not a <split>/<class>/<image> folder: read it with "
        "--config.dataset.name=rafdb/compound (or rafdb/basic for the basic tree) "
        f"--config.dataset.manual_dir={tmp_path / 'compound'} (README, \"Bring RAF-DB\").")


def test_class_folders_without_split_folders_say_what_the_layout_is(tmp_path, caplog):
    """torchvision's ImageFolder layout, <class>/<image>, read each class as a split with no
    class folders: the error said "split folder 'happy' holds no images in its class folders"."""
    from cer_jax.data import sources

    for name in ("happy", "sad"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.jpg")
    with pytest.raises(DataConfigError) as e:
        sources.FolderSource(ml_collections.ConfigDict({"folder": str(tmp_path)}))
    assert str(e.value) == (
        f"config.dataset.folder={str(tmp_path)!r}: happy/ holds images (0.jpg, ...) but no class "
        "folders; a folder dataset is <split>/<class>/<image>. If the top-level folders are your "
        "classes, move them into split folders (train_fit/, validation/, test/), e.g. "
        "train_fit/happy/0.jpg.")
    # Beside class folders, an image a split holds directly is not read: the log names it.
    other = tmp_path / "other"
    _write_folder(other, ["train"], {"train": ["a"]})
    Image.new("RGB", (8, 8)).save(other / "train" / "loose.jpg")
    with caplog.at_level("WARNING"):
        source = sources.FolderSource(ml_collections.ConfigDict({"folder": str(other)}))
    assert source.info.split_sizes == {"train": 3}
    assert any("loose.jpg (not in a class folder)" in r.getMessage() for r in caplog.records)


def test_image_folder_source(tmp_path):
    arrays = _write_folder(tmp_path, ["train", "val"], {"train": ["b", "a"], "val": ["a", "b"]})
    config = _config(tmp_path, normalization="unit", eval_resize="resize", image_size=12)
    config.input.resize_size = 12
    config.dataset.update(
        name="folder",
        folder=str(tmp_path),
        synthetic=False,
        train_split="train",
        eval_splits=("val",),
    )
    info = pipeline.get_dataset_info(config)
    assert info.class_names == ("a", "b") and info.num_classes == 2
    assert info.split_sizes == {"train": 5, "val": 4}
    config.input.image_size = 12
    batches = list(pipeline.eval_iterator(config, info, "train", global_batch_size=4))
    names = [n for b in batches for n, m in zip(b["file_name"], b["mask"], strict=True) if m]
    # Stored order: class folders in name order, files sorted within each.
    assert names == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/g.png"]
    labels = np.concatenate([b["label"] for b in batches])[:5]
    assert labels.tolist() == [0, 0, 1, 1, 1]
    images = np.concatenate([b["image"] for b in batches])
    for name, image in zip(names, images, strict=False):
        # 12 x 10 -> 12 x 12 by Pillow's bilinear resize (torchvision's Resize), channel by
        # channel, of the pixels written: every pixel, so a mirrored or shifted image shows.
        written = arrays[("train", name)].astype(np.float32) / 255.0
        ref = np.stack([np.asarray(Image.fromarray(written[..., c]).resize((12, 12),
                                                                          Image.BILINEAR))
                        for c in range(3)], -1)
        assert image.shape == (12, 12, 3)
        np.testing.assert_allclose(image, np.clip(ref, 0, 1), atol=1e-4, err_msg=name)
    train = next(pipeline.train_iterator(config, info, global_batch_size=4, seed=0))
    assert train["image"].shape == (4, 12, 12, 3)


def test_opening_a_folder_dataset_stats_no_image(tmp_path, monkeypatch):
    """Before: an is_dir() per image at every opening (each evaluation opens it again): on
    gs:// a round trip each, minutes for a RAF-DB-sized folder."""
    from cer_jax.data import sources

    _write_folder(tmp_path, ["train", "val"], {"train": ["a", "b"], "val": ["a", "b"]})
    (tmp_path / "train" / "a" / "notes.txt").write_text("x")
    (tmp_path / "train" / "a" / "more").mkdir()
    path_type = type(epath.Path(tmp_path))
    stated = []
    is_dir = path_type.is_dir
    monkeypatch.setattr(path_type, "is_dir", lambda self: stated.append(self.name) or is_dir(self))
    config = _config(tmp_path)
    config.dataset.update(name="folder", folder=str(tmp_path), synthetic=False)
    source = sources.FolderSource(config.dataset)
    assert source.info.split_sizes == {"train": 5, "val": 4}
    assert not [name for name in stated if name.endswith(".png")]
    assert {"notes.txt", "more"} <= set(stated)  # what is no image is still told apart


def test_a_folder_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """As Pillow's ImageOps.exif_transpose (and cer_jax.predict's OpenCV decoder) show it: every
    EXIF orientation, lossless (PNG's eXIf chunk) and as a phone writes it (JPEG)."""
    from PIL import ImageOps

    from cer_jax.data import sources

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # not square: turns show
    names = []
    for orientation in range(1, 9):
        for suffix in (".png", ".jpg"):
            exif = Image.Exif()
            exif[0x0112] = orientation
            name = f"{orientation}{suffix}"
            folder = tmp_path / "train" / "a"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(stored).save(folder / name, exif=exif, quality=95)
            names.append(name)
    source = sources.FolderSource(ml_collections.ConfigDict({"folder": str(tmp_path)}))
    files = [name for name, _ in source._files["train"]]
    decoded = list(source.examples("train", np.arange(len(files))).as_numpy_iterator())
    for example in decoded:
        path = tmp_path / "train" / example["file_name"].decode()
        with Image.open(path) as image:
            upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        assert example["image"].shape == upright.shape, path.name
        # JPEG too: decoded with the same (accurate) DCT as Pillow and OpenCV.
        np.testing.assert_array_equal(example["image"], upright, err_msg=path.name)
    assert sources.exif_orientation(str(tmp_path / "train" / "a" / "6.png")) == 6


def _error(config, match):
    with pytest.raises(DataConfigError, match=match) as e:
        pipeline.get_dataset_info(config)
    return str(e.value)


def test_config_errors_name_the_key_and_the_fix(tmp_path, cache_dir, info, monkeypatch):
    c = _config(cache_dir)
    c.dataset.update(name="no_such_dataset", synthetic=False)
    _error(c, r"config\.dataset\.name='no_such_dataset' is not a known TFDS dataset")
    c.dataset.name = "rafdb/compound:2.0.0"  # was TFDS's AssertionError and its traceback
    _error(c, r"^config\.dataset\.name='rafdb/compound:2\.0\.0': rafdb cannot be loaded at "
              r"version 2\.0\.0, only: 1\.0\.0\. Name one of those versions after the ':', or "
              r"none \(the newest\): 'rafdb/compound'\.$")

    c = _config(cache_dir)
    c.dataset.update(synthetic=False, data_dir=str(tmp_path / "empty"))
    msg = _error(c, r"config\.dataset\.name='rafdb/compound' is not prepared")
    assert "config.dataset.manual_dir" in msg and "--config.dataset.synthetic=True" in msg
    assert ":smoke" in msg and "whdeng.cn" in msg  # the builder's download instructions
    assert not list((tmp_path / "empty").glob("**/*.tfrecord*"))

    c = _config(cache_dir)
    c.dataset.train_split = "nope"
    msg = _error(c, r"config\.dataset\.train_split='nope'")
    assert "train_fit" in msg and "validation" in msg

    c = _config(cache_dir)
    c.dataset.eval_splits = ("test", "dev")
    _error(c, r"config\.dataset\.eval_splits='dev'")
    with pytest.raises(DataConfigError, match="has no split 'dev'"):
        next(pipeline.eval_iterator(c, info, "dev", global_batch_size=8))

    c = _config(cache_dir)
    c.dataset.update(name="folder", folder=str(tmp_path / "missing"), synthetic=False)
    _error(c, r"config\.dataset\.folder='.*missing' is not a directory")

    _write_folder(tmp_path / "tree", ["train", "test"], {"train": ["a", "b"], "test": ["a"]})
    c.dataset.folder = str(tmp_path / "tree")
    _error(c, r"class folders differ between splits 'test' \(a\) and 'train' \(a, b\)\. Every "
              r"split needs the same class folders \(an empty folder is fine\), and every "
              r"folder at the top is read as a split: move any other out\.$")

    c = _config(cache_dir)
    c.dataset.name = "mnist"
    _error(c, r"config\.dataset\.synthetic=True draws a synthetic RAF-DB")

    c = _config(cache_dir, normalization="zscore")
    _error(c, r"config\.input\.normalization='zscore': choose one of imagenet")

    c = _config(cache_dir, resize_size=16)
    assert _error(c, "resize_size") == (
        "config.input.resize_size=16: must be >= config.input.image_size=32 for the "
        "resize_crop modes: set it with the image size, e.g. --config.input.resize_size=37 "
        "(the recipes' 256 for 224).")  # 32 * 256 / 224 = 36.6

    for bad in (0, -5):  # silently a buffer of 1: the same order every epoch, no shuffling
        c = _config(cache_dir, shuffle_buffer=bad)
        _error(c, rf"config\.input\.shuffle_buffer={bad}: give a buffer of 1 or more examples "
                  r"\(1: no shuffling\), or None for the whole data shard")
    c = _config(cache_dir, prefetch=-2)
    _error(c, r"config\.input\.prefetch=-2: give a number of batches >= 0, or None")

    monkeypatch.setattr(jax, "process_count", lambda: 4)
    with pytest.raises(
        DataConfigError,
        match=r"global batch size 6 must be a positive multiple "
        r"of the number of processes \(4\)",
    ):
        pipeline.local_batch_size(6)


def test_a_build_that_another_process_finished_first_is_used(tmp_path, monkeypatch):
    """Processes sharing a disk (several on one host) may build at once: TFDS's final rename
    then fails for all but the first, which read the first one's build."""
    from tfds_rafdb import rafdb

    build = rafdb.build

    def beaten(*args):
        build(*args)  # the other process's build, now complete
        raise FileExistsError("Cannot rename incomplete.X_1.0.0. Destination 1.0.0 exists.")

    monkeypatch.setattr(rafdb, "build", beaten)
    info = pipeline.get_dataset_info(_config(tmp_path))
    assert (info.split_sizes["train"], info.split_sizes["test"]) == (40, 20)


def test_a_build_from_another_tree_is_not_served_for_this_one(cache_dir, info, tmp_path):
    """A data_dir holding rafdb built from one tree (the synthetic one, say) stops a run that
    names another tree, or none that exists, instead of training on the old build."""
    from tfds_rafdb import rafdb

    tree = os.path.join(cache_dir, "synthetic", TREE)
    c = _config(cache_dir)
    c.dataset.update(synthetic=False, data_dir=tree + "-tfds", manual_dir=tree)
    assert pipeline.get_dataset_info(c).split_sizes == info.split_sizes  # the same tree: reused
    other = tmp_path / "other"
    synthetic.write_tree(other, kind="compound", num_train_images=30, num_test_images=22, seed=1)
    c.dataset.manual_dir = str(other)
    built = os.path.join(tree + "-tfds", "rafdb", "compound", "1.0.0")
    message = (f"{built} holds rafdb/compound built from another tree than {other} (its "
               f"EmoLabel/list_patition_label.txt differs). Delete {built} to build it from "
               f"{other}, or give another data_dir.")
    assert _error(c, "another tree") == f"config.dataset.manual_dir={str(other)!r}: {message}"
    with pytest.raises(rafdb.SourceMismatchError) as e:  # the builder's own CLI: the same check
        rafdb.build("compound", str(other), tree + "-tfds")
    assert str(e.value) == message
    c.dataset.manual_dir = str(tmp_path / "typo")
    _error(c, r"config\.dataset\.manual_dir='.*typo' does not exist or is empty")


def test_a_build_is_matched_to_its_tree_once_per_process(cache_dir, info, monkeypatch):
    """The match stats every listed image (~0.4 s on RAF-DB basic), and a run opens its source
    again at each evaluation."""
    from cer_jax.data import sources
    from tfds_rafdb import rafdb

    tree = os.path.join(cache_dir, "synthetic", TREE)
    c = _config(cache_dir)
    c.dataset.update(synthetic=False, data_dir=tree + "-tfds", manual_dir=tree)
    monkeypatch.setattr(sources, "_MATCHED", set(), raising=False)
    calls = []
    check = rafdb.check_built_from
    monkeypatch.setattr(rafdb, "check_built_from", lambda *a: calls.append(a) or check(*a))
    for _ in range(3):
        assert pipeline.get_dataset_info(c) == info
    assert len(calls) == 1


def test_a_file_where_a_data_folder_goes_is_one_line(tmp_path):
    from tfds_rafdb import rafdb

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    c = _config(a_file)  # the synthetic tree's cache_dir
    assert _error(c, "cache_dir") == (f"config.dataset.cache_dir={str(a_file)!r}: {a_file} is a "
                                      "file, not a folder; give a folder path.")
    c.dataset.update(synthetic=False, data_dir=str(a_file / "tfds"), manual_dir=str(tmp_path))
    assert _error(c, "data_dir") == (f"config.dataset.data_dir={str(a_file / 'tfds')!r}: {a_file} "
                                     "is a file, not a folder; give a folder path.")
    with pytest.raises(rafdb.RafDbLayoutError) as e:  # the builder's CLI reports it in one line
        rafdb.build("compound", str(tmp_path), str(a_file))
    assert str(e.value) == (f"--data_dir={a_file} is a file; give the folder the TFDS dataset "
                            "goes in (it is made if missing).")
    assert a_file.read_text() == "mine"


def test_manual_dir_without_data_dir_builds_into_the_tfds_default(tmp_path, monkeypatch):
    """README: "let the trainer build it on first use with --config.dataset.manual_dir=...":
    data_dir left at None (TFDS's default) crashed with a TypeError in the builder."""
    root = tmp_path / "compound"
    synthetic.write_tree(root, kind="compound", num_train_images=22, num_test_images=11, seed=3)
    import tensorflow_datasets as tfds

    # TFDS reads $TFDS_DATA_DIR once, at import.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "default"))
    c = _config(tmp_path)
    c.dataset.update(synthetic=False, manual_dir=str(root))
    assert c.dataset.data_dir is None
    info = pipeline.get_dataset_info(c)
    assert info.split_sizes["train"] == 22 and info.split_sizes["test"] == 11
    assert (tmp_path / "default" / "rafdb" / "compound" / "1.0.0").is_dir()


def test_a_first_build_logs_no_missing_dataset_info_warning(tmp_path, caplog):
    """Before: TFDS's "Variant folder .../rafdb/compound/1.0.0 has no dataset_info.json", three
    WARNINGs in the trainer's log (one from the builder's CLI) of a build that went well."""
    from tfds_rafdb import rafdb

    root = tmp_path / "compound"
    synthetic.write_tree(root, kind="compound", num_train_images=22, num_test_images=11, seed=3)
    c = _config(tmp_path)
    c.dataset.update(synthetic=False, manual_dir=str(root), data_dir=str(tmp_path / "d"))
    with caplog.at_level("WARNING"):
        pipeline.get_dataset_info(c)
        with pytest.raises(rafdb.RafDbLayoutError):  # the CLI's path, up to its first check
            rafdb.build("compound_abaw7", str(tmp_path / "no_tree"), str(tmp_path / "d2"))
    assert "dataset_info.json" not in caplog.text
    assert (tmp_path / "d" / "rafdb" / "compound" / "1.0.0" / "dataset_info.json").is_file()


def _unwritable(monkeypatch, folder):
    """os.makedirs refuses `folder` and below, as for a user without write access there."""
    makedirs = os.makedirs

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise PermissionError(13, "Permission denied", str(path))
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", refuse)


def test_a_data_or_cache_dir_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    from tfds_rafdb import rafdb

    root = tmp_path / "compound"
    synthetic.write_tree(root, kind="compound", num_train_images=22, num_test_images=11, seed=3)
    locked = tmp_path / "locked"
    _unwritable(monkeypatch, locked)
    c = _config(locked / "cache")
    assert _error(c, "cache_dir") == (
        f"config.dataset.cache_dir={str(locked / 'cache')!r}: cannot write there (Permission "
        "denied); give a folder you can write to (it is made if missing).")
    c.dataset.update(synthetic=False, data_dir=str(locked / "tfds"), manual_dir=str(root))
    assert _error(c, "data_dir") == (
        f"config.dataset.data_dir={str(locked / 'tfds')!r}: cannot write there (Permission "
        "denied); give a folder you can write to (it is made if missing).")
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(locked / "default"))
    c.dataset.data_dir = None
    assert _error(c, "data_dir") == (
        f"config.dataset.data_dir=None (TFDS's default, {locked / 'default'}): cannot write "
        "there (Permission denied); give a folder you can write to (it is made if missing).")
    with pytest.raises(rafdb.RafDbLayoutError) as e:  # the builder's CLI reports it in one line
        rafdb.build("compound", str(root), str(locked / "tfds"))
    assert str(e.value) == (f"--data_dir={locked / 'tfds'}: cannot write there (Permission "
                            "denied); give a folder you can write to (it is made if missing).")


def test_a_gs_cache_dir_is_one_line_and_makes_no_local_gs_folder(tmp_path, monkeypatch):
    """The synthetic tree is drawn with local file calls: a gs:// cache_dir made a folder named
    "gs:" in the working directory and failed naming --out and a scratch folder of its own."""
    monkeypatch.chdir(tmp_path)
    c = _config("gs://my-bucket/cache")
    assert _error(c, "cache_dir") == (
        "config.dataset.cache_dir='gs://my-bucket/cache': the synthetic tree is drawn and built "
        "on this machine's disk; give a local folder (the default is ~/.cache/cer_jax).")
    assert list(tmp_path.iterdir()) == []


def test_bad_manual_dir_is_reported(tmp_path):
    bad = tmp_path / "raf"
    bad.mkdir()
    c = _config(tmp_path)
    c.dataset.update(synthetic=False, data_dir=str(tmp_path / "d"), manual_dir=str(bad))
    _error(c, r"config\.dataset\.manual_dir='.*raf' does not exist or is empty")
    (bad / "EmoLabel").mkdir()
    _error(c, r"config\.dataset\.manual_dir='.*raf' is not a usable RAF-DB tree: ")
    assert not (tmp_path / "d" / "rafdb" / "compound" / "1.0.0").exists()


def test_a_manual_dir_that_is_the_archive_says_unpack_it(tmp_path):
    """Before: "manual_dir='.../compound.zip' does not exist or is empty", of a file that
    exists."""
    archive = tmp_path / "compound.zip"
    archive.write_bytes(b"PK\x03\x04")
    c = _config(tmp_path)
    c.dataset.update(synthetic=False, data_dir=str(tmp_path / "d"), manual_dir=str(archive))
    message = _error(c, r"config\.dataset\.manual_dir='.*compound\.zip' is not a usable RAF-DB "
                        "tree: ")
    assert f"{archive} is a file, not a folder: if it is the RAF-DB archive, unpack it" in message
    assert "does not exist" not in message


def test_synthetic_tree_is_written_once(cache_dir, info, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the synthetic tree should be reused, not redrawn")

    monkeypatch.setattr(synthetic, "write_tree", fail)
    assert pipeline.get_dataset_info(_config(cache_dir)) == info


def test_unreadable_image_is_named(tmp_path):
    _write_folder(tmp_path, ["train"], {"train": ["a", "b"]})
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    config = _config(tmp_path)
    config.dataset.update(
        name="folder",
        folder=str(tmp_path),
        synthetic=False,
        train_split="train",
        eval_splits=("train",),
    )
    info = pipeline.get_dataset_info(config)
    match = r"train/b/broken\.jpg: cannot be decoded as an image \(split 'train'\)"
    with pytest.raises(DataConfigError, match=match):
        pipeline.train_iterator(config, info, global_batch_size=2, seed=0)
    with pytest.raises(DataConfigError, match=match):
        list(pipeline.eval_iterator(config, info, "train", global_batch_size=2))


@pytest.mark.parametrize("change, said", [
    ("remove", r"split 'test' 3 examples \(were 4\)"),  # was IndexError's traceback
    ("add_class", r"classes a, b, c \(were b, c\); split 'test' 6 examples \(were 4\)"),
    # The same counts: evaluated against the new labels, not the run's (was not seen).
    ("move", r"split 'test' lists other files \(an image moved to another class folder, "
             r"renamed, or one taken out and another added\)"),
])
def test_a_folder_changed_during_the_run_stops_its_next_evaluation(tmp_path, change, said):
    """An evaluation lists the folder again: a class folder added before the others shifted
    every label after it (metrics silently wrong), an image taken out was an IndexError."""
    root = tmp_path / "faces"
    _write_folder(root, ["train", "test"], {"train": ["b", "c"], "test": ["b", "c"]})
    config = _folder_config(root, image_size=8)
    info = pipeline.get_dataset_info(config)
    assert len(list(pipeline.eval_iterator(config, info, "test", global_batch_size=4))) == 1
    if change == "remove":
        os.remove(root / "test" / "c" / "1.png")
    elif change == "move":
        os.rename(root / "test" / "c" / "1.png", root / "test" / "b" / "2.png")
    else:  # two images in each split
        _write_folder(tmp_path / "new", ["train", "test"], {"train": ["a"], "test": ["a"]})
        os.remove(tmp_path / "new" / "train" / "a" / "g.png")
        for split in ("train", "test"):
            os.rename(tmp_path / "new" / split / "a", root / split / "a")
    with pytest.raises(DataConfigError) as e:
        list(pipeline.eval_iterator(config, info, "test", global_batch_size=4))
    assert re.fullmatch(
        rf"folder:{re.escape(str(root))} changed since the run began: {said}\. Its "
        r"evaluation of split 'test' would read other examples than the run's: put the data "
        r"back as it was for this run \(a new run reads it as it is then\)\.", str(e.value))


def test_an_image_one_host_cannot_read_stops_every_host_in_step(tmp_path, monkeypatch):
    """An image that fails to decode in one host's part of the data (a TFDS build is not
    decoded before training): that host stopped with its one line, while the others went on
    into the next step's collective and waited there for it (on a TPU, for ever). Training
    now votes after filling its cache; evaluation keeps the failed host in step with padding
    to the end of the split, where every host stops."""
    from cer_jax import sharding
    from cer_jax.errors import UserError

    _write_folder(tmp_path, ["train"], {"train": ["a", "b"]})
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"not a jpeg")  # example 5 of 6
    config = _config(tmp_path)
    config.dataset.update(name="folder", folder=str(tmp_path), synthetic=False,
                          train_split="train", eval_splits=("train",))
    info = pipeline.get_dataset_info(config)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    votes = []
    monkeypatch.setattr(sharding, "_failed_processes", lambda failed: votes.append(failed) or [1])
    broken = r"train/b/broken\.jpg: cannot be decoded as an image \(split 'train'\)"

    def check_stop(e, index, what):
        """Process 1 stops with its own line, process 0 with one naming process 1."""
        assert votes == [index == 1]
        if index == 1:
            assert e.type is DataConfigError and e.match(broken)
        else:
            assert str(e.value) == (
                f"process 1 stopped in the {what} on an error that this process did not meet "
                "(it could not read its part of the split: see its log).")

    for index in (0, 1):  # process 1 reads the broken image (its shard and its eval slice)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        votes.clear()
        with pytest.raises(UserError) as e:
            pipeline.train_iterator(config, info, global_batch_size=2, seed=0)
        check_stop(e, index, "reading of the training split 'train'")
        votes.clear()
        batches = pipeline.eval_iterator(config, info, "train", global_batch_size=2)
        masks = [next(batches)["mask"].tolist() for _ in range(3)]  # 3 examples each
        assert masks == ([[True]] * 3 if index == 0 else [[True], [True], [False]])
        with pytest.raises(UserError) as e:
            next(batches)
        check_stop(e, index, "evaluation of split 'train'")


def test_a_split_that_one_host_cannot_open_at_an_evaluation_stops_every_host_in_step(
        imbalanced_folder, monkeypatch):
    """An evaluation opens its split again (an image folder is listed again, on gs:// too): a
    failure there on one host is held to the end of the split as a read's is."""
    from cer_jax import sharding
    from cer_jax.errors import UserError

    config = _folder_config(imbalanced_folder)
    info = pipeline.get_dataset_info(config)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    votes = []
    monkeypatch.setattr(sharding, "_failed_processes", lambda failed: votes.append(failed) or [1])

    def unlistable(dataset_config):
        raise DataConfigError("config.dataset.folder=...: cannot be listed")

    monkeypatch.setattr(pipeline, "open_source", unlistable)
    batches = pipeline.eval_iterator(config, info, "test", global_batch_size=8)
    masks = [next(batches)["mask"] for _ in range(4)]  # 27 examples: 14 a host, 4 a batch
    assert not np.any(masks) and votes == []
    with pytest.raises(UserError, match="cannot be listed"):
        next(batches)
    assert votes == [True]


@pytest.mark.parametrize("with_tree", [True, False])
def test_a_tfds_build_holding_an_undecodable_jpeg_names_it_and_the_rebuild(tmp_path, with_tree):
    """A rafdb build made before the builder decoded each JPEG with TensorFlow may store one
    cut short. Before: training stopped at its first batch with TensorFlow's 'jpeg::Uncompress
    failed' traceback, naming no file and no build."""
    from unittest import mock

    import tensorflow_datasets as tfds

    from tfds_rafdb import rafdb
    from tfds_rafdb.rafdb import rafdb_dataset_builder as builder_module

    tree, data_dir = tmp_path / "compound", tmp_path / "tfds"
    synthetic.write_tree(tree, kind="compound", num_train_images=22, num_test_images=11, seed=3)
    original = builder_module._jpeg_bytes

    def cut_short(record):  # what an old build stored for a JPEG cut short in the tree
        data = original(record)
        return data[: len(data) // 2] if record.file_name == "train_0005.jpg" else data

    with mock.patch.object(builder_module, "_jpeg_bytes", cut_short):
        rafdb.build("compound", str(tree), str(data_dir))
    c = _config(tmp_path)
    c.dataset.update(synthetic=False, data_dir=str(data_dir), train_split="train",
                     eval_splits=("train",), manual_dir=str(tree) if with_tree else None)
    info = pipeline.get_dataset_info(c)
    built = data_dir / "rafdb/compound/1.0.0"
    names = [ex["file_name"] for ex in rafdb.Builder(config="compound", data_dir=str(data_dir))
             .as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
             .as_numpy_iterator()]
    index = names.index(b"train_0005.jpg")  # its position in TFDS's stored order
    problem = (f"train_0005.jpg (example {index}) of the rafdb/compound build in {built}: "
               "cannot be decoded as an image (split 'train'). ")
    if with_tree:
        fix = (f"Delete {built} and rerun: it is rebuilt from config.dataset.manual_dir="
               f"{str(tree)!r}, and the builder names any image there to replace.")
    else:
        fix = ("The build is broken (one made before the builder decoded every JPEG with "
               f"TensorFlow can be): delete {built} and rebuild it from your RAF-DB tree, "
               "`python -m tfds_rafdb.rafdb --builder_config=compound "
               f"--manual_dir=/data/RAF-DB/compound --data_dir={data_dir}` (README, Bring "
               "RAF-DB), or rerun with config.dataset.manual_dir set; the builder names any "
               "image to replace.")
    for cache in (True, False):
        c.input.cache = cache
        with pytest.raises(DataConfigError) as e:
            next(pipeline.train_iterator(c, info, global_batch_size=2, seed=0))
        assert str(e.value) == problem + fix
    with pytest.raises(DataConfigError) as e:
        list(pipeline.eval_iterator(c, info, "train", global_batch_size=2))
    assert str(e.value) == problem + fix


def test_an_iterator_left_open_at_exit_ends_quietly(imbalanced_folder):
    """A train iterator that an API user never closes is collected after TensorFlow's modules
    are torn down; its decode-error guard must not print an AttributeError then."""
    script = (
        "import ml_collections, sys\n"
        "from cer_jax.data import dataset_defaults, input_defaults, pipeline\n"
        "c = ml_collections.ConfigDict(); c.dataset = dataset_defaults()\n"
        "c.dataset.update(name='folder', folder=sys.argv[1], train_split='train',\n"
        "                 eval_splits=('test',))\n"
        "c.input = input_defaults(); c.input.update(image_size=8, resize_size=10)\n"
        "info = pipeline.get_dataset_info(c)\n"
        "it = pipeline.train_iterator(c, info, global_batch_size=4, seed=0)\n"
        "print(next(it)['label'].shape)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(imbalanced_folder)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "(4,)"
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("synthetic_seed", -1, "config.dataset.synthetic_seed=-1: give a seed >= 0."),
    ("synthetic_num_train_images", 0, "config.dataset.synthetic_num_train_images=0: 0 images "
     "cannot give each of the 11 compound classes at least 2: ask for at least 22."),
    ("synthetic_num_test_images", 10_000, "config.dataset.synthetic_num_test_images=10000: "
     "10000 test images do not fit RAF-DB's 4-digit compound test ids (the TFDS builder checks "
     "them): ask for at most 9999."),
])
def test_a_bad_synthetic_setting_names_its_config_key_before_drawing(tmp_path, key, value,
                                                                     message):
    """A negative seed was numpy's traceback ('expected non-negative integer') at the first
    image; a bad count did not say which of the config's two counts it was."""
    config = _config(tmp_path / "cache")
    config.dataset[key] = value
    with pytest.raises(synthetic.SyntheticSizeError) as e:
        pipeline.get_dataset_info(config)
    assert str(e.value) == message
    assert not (tmp_path / "cache").exists()


def test_an_image_taken_out_of_an_uncached_folder_during_training_is_one_line(tmp_path):
    """input.cache=False reads each image every epoch: one deleted meanwhile was TensorFlow's
    NotFoundError and its traceback."""
    root = tmp_path / "faces"
    _write_folder(root, ["train", "test"], {"train": ["b", "c"], "test": ["b", "c"]})
    config = _folder_config(root, cache=False)
    info = pipeline.get_dataset_info(config)
    batches = pipeline.train_iterator(config, info, global_batch_size=2, seed=0)
    next(batches)
    os.remove(root / "train" / "c" / "1.png")
    with pytest.raises(DataConfigError) as e:
        for _ in range(20):  # 5 images: within a few epochs
            next(batches)
    assert str(e.value) == (
        f"{root / 'train' / 'c' / '1.png'}: not found (split 'train'): it was there when the "
        "run began. Put it back (a new run reads the data as they are then).")


def test_numpy_numbers_in_a_config_files_tuples_pass_the_number_checks():
    """A config file may build its tuples with numpy: the check that refuses a word among the
    numbers (`0.5,1.O`) must still take np.float32 and np.int64."""
    from cer_jax.config_loading import load_config
    from cer_jax.fusion import strategies

    config = load_config("configs/vit.py")
    config.input.crop_scale = (np.float32(0.08), np.float64(1.0))
    pipeline.check_input_config(config.input)
    strategies.check_options("feature_mlp", {"hidden_sizes": (np.int64(256),)})
    with pytest.raises(ValueError):
        strategies.check_options("feature_mlp", {"hidden_sizes": (np.float64(2.5),)})
