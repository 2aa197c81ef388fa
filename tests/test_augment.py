"""Augmentations: identities, geometry against OpenCV / SciPy references, ranges, seeds."""

import cv2
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from cer_jax.data import augment
from cer_jax.data.config import input_defaults

tf.config.set_visible_devices([], "GPU")


def _image(h=24, w=20, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (h, w, 3)).astype(np.float32)


def _seed(i):
    return tf.constant([i, 7], tf.int64)


def test_identity_parameters_give_identity():
    x = _image()
    center = ((x.shape[1] - 1) / 2, (x.shape[0] - 1) / 2)
    eye = augment.affine_matrix(0.0, (0.0, 0.0), 1.0, (0.0, 0.0), center)
    np.testing.assert_allclose(augment.apply_affine(x, eye).numpy(), x, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(augment.color_jitter(x, _seed(0))), x)
    tiny = augment.color_jitter(x, _seed(0), 1e-7, 1e-7, 1e-7, 1e-7).numpy()
    np.testing.assert_allclose(tiny, x, atol=1e-5)
    np.testing.assert_allclose(augment.gaussian_blur(x, 1e-3, 5).numpy(), x, atol=1e-6)
    square = _image(16, 16)
    crop = augment.random_resized_crop(square, _seed(1), 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(crop.numpy(), square, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(augment.normalize(x, "unit")), x)


def test_flip_flips_about_half_the_time():
    x = _image()
    flipped = 0
    for i in range(40):
        y = augment.random_flip(x, _seed(i)).numpy()
        if np.array_equal(y, x[:, ::-1]):
            flipped += 1
        else:
            np.testing.assert_array_equal(y, x)
    assert 8 <= flipped <= 32


def test_pure_translation_moves_a_pixel_where_expected():
    x = np.zeros((20, 20, 3), np.float32)
    x[5, 7] = 1.0  # row 5, column 7
    forward = augment.affine_matrix(0.0, (3.0, -2.0), 1.0, (0.0, 0.0), (9.5, 9.5))
    y = augment.apply_affine(x, forward).numpy()
    assert y[3, 10].tolist() == [1.0, 1.0, 1.0]
    assert y.sum() == pytest.approx(3.0)


def test_rotation_is_clockwise_on_screen():
    x = np.zeros((21, 21, 3), np.float32)
    x[10, 15] = 1.0  # 5 px right of the centre (10, 10)
    forward = augment.affine_matrix(90.0, (0.0, 0.0), 1.0, (0.0, 0.0), (10.0, 10.0))
    y = augment.apply_affine(x, forward).numpy()
    np.testing.assert_allclose(y[15, 10], 1.0, atol=1e-5)  # now 5 px below the centre
    assert y.sum() == pytest.approx(3.0, abs=1e-4)


def test_affine_matches_opencv_warp():
    x = _image(32, 32)
    forward = augment.affine_matrix(12.0, (2.5, -1.5), 1.07, (8.0, 0.0), (15.5, 15.5))
    ours = augment.apply_affine(x, forward).numpy()
    ref = cv2.warpAffine(
        x,
        forward.numpy()[:2].astype(np.float64),
        (32, 32),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    # Compare away from the border, where fill conventions differ by half a pixel.
    np.testing.assert_allclose(ours[4:-4, 4:-4], ref[4:-4, 4:-4], atol=2e-2)


@pytest.mark.parametrize("shape, size", [
    ((100, 100), (224, 224)),  # RAF-DB's aligned faces to the recipes' input: upscaled
    ((100, 100), (64, 64)),  # shrunk: antialiased
    ((90, 120), (45, 300)),  # one axis shrinks, the other grows
])
def test_resize_matches_pillow_bilinear(shape, size):
    """torchvision's Resize on PIL images: Pillow's bilinear filter, support widened when
    shrinking. Plain bilinear would miss the shrinking cases by 0.2-0.45 on noise."""
    x = _image(*shape)
    ref = np.stack([np.asarray(Image.fromarray(x[..., c]).resize(size[::-1], Image.BILINEAR))
                    for c in range(3)], -1)
    np.testing.assert_allclose(augment.resize(x, size).numpy(), np.clip(ref, 0, 1), atol=2e-5)


def test_gaussian_blur_matches_scipy():
    x = _image(17, 23)
    ours = augment.gaussian_blur(x, 1.3, 5).numpy()
    ref = np.stack(
        [ndimage.gaussian_filter(x[..., c], 1.3, mode="mirror", radius=2) for c in range(3)], -1
    )
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_random_erasing_changes_only_a_bounded_rectangle():
    x = _image(32, 32)
    erased = 0
    for i in range(20):
        y = augment.random_erasing(x, _seed(i), area=(0.02, 0.2), ratio=(0.3, 3.3)).numpy()
        changed = np.any(y != x, axis=-1)
        if not changed.any():
            continue
        erased += 1
        rows, cols = np.nonzero(changed)
        box_h, box_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box_h * box_w <= 0.2 * 32 * 32 * 1.15  # rounding of the sides
        assert changed.sum() >= 0.5 * box_h * box_w  # one filled rectangle, not scattered pixels
        assert y.min() >= 0.0 and y.max() <= 1.0
    assert erased >= 15


def test_box_sampler_fit_rules_and_aspect_ratio():
    """RandomResizedCrop may take the whole image (sides <= the image's); RandomErasing may not
    (sides <); ratio is width / height for the crop and height / width for erasing."""
    seeds = tf.random.experimental.stateless_split(_seed(0), 4)
    shape = tf.constant([16, 16, 3])
    whole = augment._sample_box(seeds, shape, (1.0, 1.0), (1.0, 1.0), strict=False)
    assert [int(v) for v in whole] == [0, 0, 16, 16, 1]
    none = augment._sample_box(seeds, shape, (1.0, 1.0), (1.0, 1.0), strict=True)
    assert [int(v) for v in none[2:]] == [0, 0, 0]
    wide = augment._sample_box(seeds, tf.constant([40, 40, 3]), (0.18, 0.18), (2.0, 2.0), False)
    assert [int(v) for v in wide[2:]] == [12, 24, 1]  # area 0.18 * 1600 = 288, width 2 x height
    x = _image(40, 40)
    y = augment.random_erasing(x, _seed(1), area=(0.18, 0.18), ratio=(2.0, 2.0)).numpy()
    rows, cols = np.nonzero(np.any(y != x, axis=-1))
    assert rows.max() - rows.min() + 1 == 24 and cols.max() - cols.min() + 1 == 12  # tall
    np.testing.assert_array_equal(augment.random_erasing(x, _seed(1), (1.0, 1.0)).numpy(), x)


def test_color_jitter_stays_in_range_and_changes_image():
    x = _image()
    y = augment.color_jitter(x, _seed(3), 0.5, 0.5, 0.5, 0.1).numpy()
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert not np.allclose(y, x)
    b = augment.color_jitter(x, _seed(3), brightness=0.5).numpy()
    ratio = b[x > 0.05] / x[x > 0.05]
    unclipped = b[x > 0.05] < 1.0
    assert np.allclose(ratio[unclipped], ratio[unclipped][0], atol=1e-4)  # one global factor
    assert 0.5 <= ratio[unclipped][0] <= 1.5


def _colourful(seed=0):
    """Pixels well inside (0, 1) with different channel means (so the luma mean 0.299 R + 0.587
    G + 0.114 B is not the plain mean) and clear hues: no adjustment below clips."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array([0.55, 0.3, 0.42]), np.array([0.65, 0.4, 0.5])
    return (lo + (hi - lo) * rng.uniform(size=(16, 12, 3))).astype(np.float32)


def _blend_factor(y, x, towards):
    """The f with y = f * x + (1 - f) * towards (least squares), and the worst residual."""
    f = np.sum((y - towards) * (x - towards)) / np.sum((x - towards) ** 2)
    return f, np.abs(y - (f * x + (1 - f) * towards)).max()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_saturation_and_hue_are_torchvisions(seed):
    """torchvision's definitions, written here: contrast blends with the mean of the image's
    luma, saturation with each pixel's luma, by one random factor in [1 - a, 1 + a]; hue turns
    every pixel's HSV hue by one random shift in [-h, h] turns, keeping S and V."""
    x = _colourful(seed)
    luma = (x @ np.array([0.299, 0.587, 0.114]))[..., None]

    y = augment.color_jitter(x, _seed(seed), contrast=0.5).numpy()
    f, residual = _blend_factor(y, x, luma.mean())
    assert residual < 2e-4 and 0.5 <= f <= 1.5 and abs(f - 1) > 1e-3, (f, residual)

    y = augment.color_jitter(x, _seed(seed), saturation=0.5).numpy()
    f, residual = _blend_factor(y, x, luma)
    assert residual < 2e-4 and 0.5 <= f <= 1.5 and abs(f - 1) > 1e-3, (f, residual)

    y = augment.color_jitter(x, _seed(seed), hue=0.1).numpy()
    hsv_x, hsv_y = (cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2HSV) for a in (x, y))
    np.testing.assert_allclose(hsv_y[..., 1:], hsv_x[..., 1:], atol=2e-3)  # S and V kept
    turn = ((hsv_y[..., 0] - hsv_x[..., 0]) / 360.0 + 0.5) % 1.0 - 0.5  # in [-0.5, 0.5)
    assert np.ptp(turn) < 2e-3 and 1e-3 < abs(turn.mean()) <= 0.1 + 1e-3, turn.mean()


def _all_on() -> ml_collections.ConfigDict:
    cfg = input_defaults()
    cfg.image_size, cfg.resize_size = 32, 36
    cfg.color_jitter = (0.5, 0.5, 0.5, 0.1)
    cfg.affine.prob = cfg.blur.prob = cfg.random_erasing.prob = 1.0
    return cfg


@pytest.mark.parametrize("train_resize", ["random_resized_crop", "resize_crop"])
def test_train_view_range_shape_and_seeds(train_resize):
    cfg = _all_on()
    cfg.train_resize, cfg.normalization = train_resize, "unit"
    image = tf.constant((_image(50, 40) * 255).astype(np.uint8))
    a = augment.train_view(image, _seed(1), cfg).numpy()
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, augment.train_view(image, _seed(1), cfg).numpy())
    assert not np.array_equal(a, augment.train_view(image, _seed(2), cfg).numpy())


def test_normalisations_and_eval_view():
    """The published definitions: [-1, 1] is 2x - 1, ImageNet's mean / std are torchvision's.
    Grey levels 0 and 51 as well as 255: at 255 alone 'unit' and 'minus_one_one' both give 1."""
    cfg = input_defaults()
    cfg.image_size, cfg.resize_size, cfg.eval_resize = 8, 8, "resize"
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for level in (0, 51, 255):
        image = tf.constant(np.full((8, 8, 3), level, np.uint8))
        x = np.full(3, level / 255)
        for mode, expected in [("unit", x), ("minus_one_one", 2 * x - 1),
                               ("imagenet", (x - mean) / std)]:
            cfg.normalization = mode
            out = augment.eval_view(image, cfg).numpy()
            np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-6,
                                       atol=1e-6, err_msg=(mode, level))


def test_the_recipe_applies_each_augmentation_at_its_rate_and_independently():
    """configs/vit.py's training view (ResNet50's uses the same augmentations), run eagerly for
    many seeds with each augmentation replaced by a recorder: each one applies at its configured
    probability, and whether one applies says nothing about another (separate seeds)."""
    from cer_jax.config_loading import load_config

    cfg = load_config("configs/vit.py").input
    resnet = load_config("configs/resnet50.py").input.to_dict()
    assert {**resnet, "normalization": cfg.normalization} == cfg.to_dict()
    cfg.image_size, cfg.resize_size = 16, 20
    rates = {"color_jitter": cfg.color_jitter_prob, "random_affine": cfg.affine.prob,
             "random_gaussian_blur": cfg.blur.prob}
    assert 0 < min(rates.values()) and max(rates.values()) < 1  # the recipes' own rates
    n = 600
    applied = {name: np.zeros(n, bool) for name in rates}
    image = tf.constant((_image(24, 24) * 255).astype(np.uint8))
    with pytest.MonkeyPatch.context() as patch:
        for name in rates:
            def record(x, *args, name=name, **kwargs):
                applied[name][index] = True
                return x
            patch.setattr(augment, name, record)
        for index in range(n):
            augment.train_view(image, tf.constant([index, 3], tf.int64), cfg)
    sigma = lambda p: 4 * np.sqrt(p * (1 - p) / n)  # noqa: E731
    for name, p in rates.items():
        assert abs(applied[name].mean() - p) < sigma(p), (name, applied[name].mean(), p)
    # Independence: the correlation of two decisions is within 4 sigma (1 / sqrt(n)) of 0; two
    # gates sharing one seed would correlate by 0.25 to 0.5 at these rates.
    names = list(rates)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            phi = np.corrcoef(applied[a], applied[b])[0, 1]
            assert abs(phi) < 4 / np.sqrt(n), (a, b, phi)
