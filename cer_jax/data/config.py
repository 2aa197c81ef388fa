"""Default `dataset` and `input` config blocks (plain ml_collections, configs as code).

Experiment configs start from these and override fields, e.g.

    config.dataset = dataset_defaults()
    config.input = input_defaults()
    config.input.flip = True
"""

from __future__ import annotations

import ml_collections

from cer_jax import synthetic


def dataset_defaults() -> ml_collections.ConfigDict:
    """Where the examples come from and which splits train / evaluate."""
    c = ml_collections.ConfigDict()
    # Any TFDS name, including "rafdb/<config>" (compound, compound_abaw7, basic), optionally
    # with a version ("rafdb/compound:1.0.0"); or "folder" for a <split>/<class>/<image> tree.
    c.name = "rafdb/compound"
    # TFDS data directory; None = the TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    # Root of the unpacked RAF-DB tree (EmoLabel/, Image/aligned/, ...): used to build
    # "rafdb/*" in data_dir on first use when it is not prepared yet.
    c.manual_dir = ml_collections.FieldReference(None, field_type=str)
    # True: draw the built-in synthetic RAF-DB tree into cache_dir on first use and build its
    # TFDS dataset there too (the trainer refuses a data_dir or manual_dir beside it; name
    # "folder" reads its folder instead). For smoke runs / CI.
    c.synthetic = False
    c.synthetic_num_train_images = synthetic.NUM_TRAIN_IMAGES
    c.synthetic_num_test_images = synthetic.NUM_TEST_IMAGES
    c.synthetic_seed = 0
    # Where synthetic trees and their TFDS builds live (a local folder: they are drawn here).
    c.cache_dir = "~/.cache/cer_jax"
    # For name="folder": root of a <split>/<class>/<image> tree. Class names are the sorted
    # sub-folder names and must be identical in every split.
    c.folder = ml_collections.FieldReference(None, field_type=str)
    # True: accept classes without training examples (their F1 will be 0); False: stop before
    # training and name them.
    c.allow_empty_classes = False
    # The split the trainer fits on; "train_fit" is RAF-DB train minus the held-out validation.
    c.train_split = "train_fit"
    # Splits evaluated (and exported) during / after training.
    c.eval_splits = ("validation", "test")
    # Feature names inside each example. file_key may be absent from other TFDS datasets:
    # ids "<split>/<index>" are synthesised then.
    c.image_key = "image"
    c.label_key = "label"
    c.file_key = "file_name"
    return c


def input_defaults() -> ml_collections.ConfigDict:
    """How examples become model inputs: geometry, augmentation, normalisation, balancing.

    Heavy augmentations default to off; model configs switch them on.
    """
    c = ml_collections.ConfigDict()
    # Side of the square model input.
    c.image_size = 224
    # "imagenet" (mean/std), "minus_one_one" ([-1, 1]) or "unit" ([0, 1], MA-Net's).
    c.normalization = "imagenet"
    # The training split is dealt (class by class) into this many disjoint shards; every global
    # batch takes an equal part from each, and each process reads a contiguous block of them.
    # The data stream depends on this number, never on the number of processes, so a run
    # resumes exactly on any process count that divides it. None = one shard per process
    # (recorded in the workdir's config.json at the first start and kept on resume).
    c.num_data_shards = ml_collections.FieldReference(None, field_type=int)
    # Seed of the training data order and augmentations; None = the config's `seed`, which
    # also initialises the model: set this to vary one and keep the other.
    c.seed = ml_collections.FieldReference(None, field_type=int)
    # True: keep the decoded (uint8, original size) images of the host's shards in memory.
    c.cache = True
    # Shuffle buffer of each data shard's stream; None = the whole shard (an exact per-epoch
    # permutation, the right choice for small face datasets). balance="sampling" shuffles each
    # class whole: it takes None only.
    c.shuffle_buffer = ml_collections.FieldReference(None, field_type=int)
    # Training geometry: "random_resized_crop" (crop_scale / crop_ratio, like torchvision /
    # Inception) or "resize_crop" (resize to resize_size, then a random image_size crop).
    c.train_resize = "random_resized_crop"
    # Evaluation geometry: "resize_crop" (resize to resize_size, central image_size crop) or
    # "resize" (plain resize to image_size, as MA-Net evaluates).
    c.eval_resize = "resize_crop"
    # Intermediate size for the "resize_crop" modes (256 at 224, the ImageNet convention).
    c.resize_size = 256
    c.crop_scale = (0.08, 1.0)
    c.crop_ratio = (3.0 / 4.0, 4.0 / 3.0)
    # Random horizontal flip with probability 0.5.
    c.flip = True
    # (brightness, contrast, saturation, hue) as torchvision ColorJitter, e.g.
    # (0.5, 0.5, 0.5, 0.1); None = off. Applied with probability color_jitter_prob.
    c.color_jitter = ml_collections.FieldReference(None, field_type=tuple)
    c.color_jitter_prob = 1.0
    # Random affine about the image centre (torchvision RandomAffine semantics); prob 0 = off.
    c.affine = ml_collections.ConfigDict(
        dict(prob=0.0, degrees=15.0, translate=0.1, scale=(0.9, 1.1), shear=10.0)
    )
    # Gaussian blur, separable, reflect padding; sigma drawn uniformly; prob 0 = off.
    c.blur = ml_collections.ConfigDict(dict(prob=0.0, sigma=(0.1, 2.0), kernel=5))
    # Random erasing (torchvision's box): one rectangle of relative area in `area`, aspect
    # ratio in `ratio`, filled with uniform random pixels before normalisation; prob 0 = off.
    c.random_erasing = ml_collections.ConfigDict(
        dict(prob=0.0, area=(0.02, 0.33), ratio=(0.3, 3.3))
    )
    # Class imbalance: "none", "sampling" (class-balanced sampling of the training stream) or
    # "loss_weights" (the trainer weights the loss by pipeline.class_weights).
    c.balance = "none"
    # tf.data prefetch depth (batches); None = AUTOTUNE.
    c.prefetch = ml_collections.FieldReference(2, field_type=int)
    return c
