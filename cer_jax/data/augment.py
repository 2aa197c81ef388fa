"""Image augmentations as pure TensorFlow functions of one float image in [0, 1].

Every random op takes a stateless seed (int32/int64 [2]) so that a training stream is a pure
function of (seed, example position): reproducible, and resumable from any step. Semantics
follow torchvision (RandomResizedCrop, ColorJitter, RandomAffine, GaussianBlur, RandomErasing)
because the recipes this project reproduces were written with it.

TensorFlow is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

Tensor = Any  # tf.Tensor; TensorFlow is imported lazily.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What each input.normalization computes from a [0, 1] image, as the (mean, std) per channel of
# (image - mean) / std: what a pre-trained file's preprocessing is compared with.
NORMALIZATION_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                       "minus_one_one": ((0.5,) * 3, (0.5,) * 3),
                       "unit": ((0.0,) * 3, (1.0,) * 3)}
NORMALIZATIONS = tuple(NORMALIZATION_STATS)
_ATTEMPTS = 10  # Candidate boxes drawn at once by the crop / erasing samplers (torchvision).


def _tf():
    import tensorflow as tf

    return tf


def _uniform(seed: Tensor, shape: Sequence[int], lo: float, hi: float) -> Tensor:
    tf = _tf()
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def _fold(seed: Tensor, i: int) -> Tensor:
    return _tf().random.experimental.stateless_fold_in(seed, i)


def to_unit(image: Tensor) -> Tensor:
    """uint8 [H, W, 3] -> float32 in [0, 1]."""
    tf = _tf()
    return tf.image.convert_image_dtype(image, tf.float32)


def normalize(image: Tensor, mode: str) -> Tensor:
    """Maps a [0, 1] image to the model's input range."""
    tf = _tf()
    if mode == "imagenet":
        mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
        if image.shape.is_fully_defined():
            # Constants of the image's own shape: TF's per-channel broadcast over [H, W, 3]
            # costs as much as the rest of a crop-and-flip view (BENCHMARKS.md, "Input pipeline").
            mean, std = (np.broadcast_to(v, image.shape.as_list()) for v in (mean, std))
        return (image - tf.constant(mean)) / tf.constant(std)
    if mode == "minus_one_one":
        return image * 2.0 - 1.0
    if mode == "unit":
        return image
    raise ValueError(f"Unknown normalization {mode!r}; choose one of {NORMALIZATIONS}.")


def maybe(fn: Callable[[Tensor], Tensor], image: Tensor, seed: Tensor, prob: float) -> Tensor:
    """Applies `fn` with probability `prob` (drawn from `seed`)."""
    tf = _tf()
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return tf.cond(_uniform(seed, [], 0.0, 1.0) < prob, lambda: fn(image), lambda: image)


# --- geometry ---------------------------------------------------------------------------------


def _bilinear(image: Tensor, hw: Any) -> Tensor:
    """Bilinear resize to hw = (h, w), antialiased when an axis shrinks; clipped to [0, 1].

    TF's antialiased kernel widens only when shrinking, so upscaling it gives plain bilinear's
    values (to float rounding) at ~4x the cost: RAF-DB's 100x100 faces are always upscaled.
    """
    tf = _tf()
    shrinks = tf.reduce_any(tf.shape(image)[:2] > tf.cast(hw, tf.int32))
    out = tf.cond(shrinks, lambda: tf.image.resize(image, hw, antialias=True),
                  lambda: tf.image.resize(image, hw))
    return tf.clip_by_value(out, 0.0, 1.0)


def resize(image: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinear (antialiased) resize to (size, size) or (h, w); keeps [0, 1]."""
    return _bilinear(image, (size, size) if isinstance(size, int) else tuple(size))


def resize_shorter(image: Tensor, size: int) -> Tensor:
    """Resizes the shorter side to `size`, keeping the aspect ratio (torchvision Resize(int))."""
    tf = _tf()
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new = tf.cast(tf.round(hw * (size / tf.reduce_min(hw))), tf.int32)
    return _bilinear(image, tf.maximum(new, size))


def central_crop(image: Tensor, size: int) -> Tensor:
    tf = _tf()
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (h - size) // 2, (w - size) // 2
    return tf.ensure_shape(image[top : top + size, left : left + size], [size, size, 3])


def random_crop(image: Tensor, seed: Tensor, size: int) -> Tensor:
    tf = _tf()
    return tf.image.stateless_random_crop(image, [size, size, 3], seed)


def _sample_box(
    seeds: Tensor,
    shape: Tensor,
    area: Sequence[float],
    ratio: Sequence[float],
    strict: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's box sampler (RandomResizedCrop, RandomErasing), written once.

    Draws `_ATTEMPTS` candidate boxes at once: area = image area x U(area), aspect ratio
    (width / height) log-uniform in `ratio`, sides rounded; takes the first that fits the image
    (sides <= the image's, or < with `strict`) and places it uniformly at random. Uses
    seeds[0] (area), seeds[1] (ratio) and seeds[2] (position).

    Returns int32 (top, left, height, width) and `found`, whether any candidate fits; without
    one, height = width = 0 and the caller decides.
    """
    tf = _tf()
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    target = h * w * _uniform(seeds[0], [_ATTEMPTS], area[0], area[1])
    aspect = tf.exp(_uniform(seeds[1], [_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
    bw = tf.round(tf.sqrt(target * aspect))
    bh = tf.round(tf.sqrt(target / aspect))
    fits = (bw < w) & (bh < h) if strict else (bw <= w) & (bh <= h)
    ok = fits & (bw > 0) & (bh > 0)
    first = tf.argmax(tf.cast(ok, tf.int32))
    found = tf.reduce_any(ok)
    bh = tf.cast(tf.where(found, bh[first], 0.0), tf.int32)
    bw = tf.cast(tf.where(found, bw[first], 0.0), tf.int32)
    u = _uniform(seeds[2], [2], 0.0, 1.0)
    top = tf.cast(u[0] * tf.cast(shape[0] - bh + 1, tf.float32), tf.int32)
    left = tf.cast(u[1] * tf.cast(shape[1] - bw + 1, tf.float32), tf.int32)
    top, left = tf.minimum(top, shape[0] - bh), tf.minimum(left, shape[1] - bw)
    return top, left, bh, bw, found


def random_resized_crop(
    image: Tensor,
    seed: Tensor,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> Tensor:
    """torchvision RandomResizedCrop: a box of random area / aspect ratio, resized to size."""
    tf = _tf()
    shape = tf.shape(image)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    top, left, ch, cw, found = _sample_box(seeds, shape, scale, ratio, strict=False)
    # Fallback (no candidate fits): the central crop with the aspect ratio clamped to `ratio`.
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    in_ratio = w / h
    fw = tf.where(in_ratio < ratio[0], w, tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fh = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    fh, fw = tf.cast(fh, tf.int32), tf.cast(fw, tf.int32)
    ch, cw = tf.where(found, ch, fh), tf.where(found, cw, fw)
    top = tf.where(found, top, (shape[0] - ch) // 2)
    left = tf.where(found, left, (shape[1] - cw) // 2)
    crop = image[top : top + ch, left : left + cw]
    return tf.ensure_shape(resize(crop, size), [size, size, 3])


def random_flip(image: Tensor, seed: Tensor) -> Tensor:
    """Horizontal flip with probability 0.5."""
    return _tf().image.stateless_random_flip_left_right(image, seed)


def affine_matrix(
    angle: Tensor | float,
    translate: tuple[Tensor | float, Tensor | float],
    scale: Tensor | float,
    shear: tuple[Tensor | float, Tensor | float],
    center: tuple[Tensor | float, Tensor | float],
) -> Tensor:
    """Forward 3x3 map of pixel coordinates (x right, y down), about `center`.

    Rotation by `angle` degrees (clockwise on screen, as torchvision), shear (x, y) in degrees,
    isotropic `scale`, then translation (tx, ty) in pixels.
    """
    tf = _tf()
    f = lambda v: tf.cast(v, tf.float32)  # noqa: E731
    rot, sx, sy = (f(v) * (math.pi / 180.0) for v in (angle, shear[0], shear[1]))
    cx, cy = f(center[0]), f(center[1])
    one, zero = tf.ones([]), tf.zeros([])
    rotation = tf.stack([[tf.cos(rot), -tf.sin(rot)], [tf.sin(rot), tf.cos(rot)]])
    shearing = tf.stack([[one, tf.tan(sx)], [tf.tan(sy), one]])
    linear = rotation @ shearing * f(scale)
    offset = tf.stack([cx + f(translate[0]), cy + f(translate[1])])
    offset = offset - tf.linalg.matvec(linear, tf.stack([cx, cy]))
    top = tf.concat([linear, offset[:, None]], axis=1)
    return tf.concat([top, tf.stack([[zero, zero, one]])], axis=0)


def apply_affine(image: Tensor, forward: Tensor, fill: float = 0.0) -> Tensor:
    """Warps `image` by the forward pixel map `forward` (bilinear, constant fill)."""
    tf = _tf()
    inverse = tf.linalg.inv(forward)
    inverse = inverse / inverse[2, 2]
    transform = tf.reshape(inverse, [9])[:8][None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=tf.constant(fill, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    return tf.ensure_shape(out, image.shape)


def random_affine(
    image: Tensor,
    seed: Tensor,
    degrees: float,
    translate: float,
    scale: Sequence[float],
    shear: float,
) -> Tensor:
    """torchvision RandomAffine(degrees, (translate, translate), scale, shear) about the centre."""
    tf = _tf()
    u = _uniform(seed, [5], -1.0, 1.0)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    h, w = hw[0], hw[1]
    s = scale[0] + (u[3] + 1.0) * 0.5 * (scale[1] - scale[0])
    forward = affine_matrix(
        angle=u[0] * degrees,
        translate=(u[1] * translate * w, u[2] * translate * h),
        scale=s,
        shear=(u[4] * shear, 0.0),
        center=((w - 1.0) / 2.0, (h - 1.0) / 2.0),
    )
    return apply_affine(image, forward)


# --- photometric ------------------------------------------------------------------------------


def _gray(image: Tensor) -> Tensor:
    return _tf().image.rgb_to_grayscale(image)


def _gray_mean(image: Tensor) -> Tensor:
    """Scalar mean of the grayscale image: grayscale is linear, so it is the grayscale of the
    mean pixel, and no grayscale image is made."""
    tf = _tf()
    return tf.reshape(_gray(tf.reduce_mean(image, [0, 1], keepdims=True)), [])


def _blend(image: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return _tf().clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def color_jitter(
    image: Tensor,
    seed: Tensor,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
) -> Tensor:
    """torchvision ColorJitter: the four adjustments in a random order, random strengths."""
    tf = _tf()
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def factor(i: int, amount: float) -> Tensor:
        return _uniform(seeds[i], [], max(0.0, 1.0 - amount), 1.0 + amount)

    ops = [
        lambda x: tf.clip_by_value(x * factor(0, brightness), 0.0, 1.0),  # blend with black
        lambda x: _blend(x, _gray_mean(x), factor(1, contrast)),
        lambda x: _blend(x, _gray(x), factor(2, saturation)),
        lambda x: tf.image.adjust_hue(x, _uniform(seeds[3], [], -hue, hue)),
    ]
    enabled = [i for i, v in enumerate((brightness, contrast, saturation, hue)) if v > 0]
    if not enabled:
        return image
    order = tf.argsort(_uniform(seeds[4], [len(enabled)], 0.0, 1.0))
    branches = [ops[i] for i in enabled]
    for step in range(len(enabled)):
        image = tf.switch_case(order[step], [lambda b=b, x=image: b(x) for b in branches])
    return tf.clip_by_value(image, 0.0, 1.0)


def gaussian_kernel(sigma: Tensor | float, size: int) -> Tensor:
    tf = _tf()
    x = tf.range(size, dtype=tf.float32) - (size - 1) / 2.0
    k = tf.exp(-0.5 * tf.square(x / tf.cast(sigma, tf.float32)))
    return k / tf.reduce_sum(k)


def gaussian_blur(image: Tensor, sigma: Tensor | float, size: int) -> Tensor:
    """Separable Gaussian blur with reflect padding (torchvision GaussianBlur)."""
    tf = _tf()
    if size % 2 != 1:
        raise ValueError(f"Blur kernel size must be odd, got {size}.")
    k = gaussian_kernel(sigma, size)
    pad = size // 2
    x = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")[None]
    # Depthwise: 2.3x faster on CPU than channels-as-batch convolutions with one channel.
    k = tf.tile(k[:, None, None, None], [1, 1, tf.shape(image)[-1], 1])  # [size, 1, C, 1]
    x = tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, tf.transpose(k, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")
    return tf.ensure_shape(x[0], image.shape)


def random_gaussian_blur(image: Tensor, seed: Tensor, sigma: Sequence[float], size: int) -> Tensor:
    return gaussian_blur(image, _uniform(seed, [], sigma[0], sigma[1]), size)


def random_erasing(
    image: Tensor,
    seed: Tensor,
    area: Sequence[float] = (0.02, 0.33),
    ratio: Sequence[float] = (0.3, 3.3),
) -> Tensor:
    """Erases one random rectangle with uniform random pixel values in [0, 1], before
    normalisation (torchvision's RandomErasing(value='random') draws normal noise, after it).

    The box is torchvision's: up to 10 candidate boxes are drawn and the first that fits is
    used; if none fits the image is returned unchanged.
    """
    tf = _tf()
    shape = tf.shape(image)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    # torchvision's erasing ratio is height / width; the sampler's is width / height.
    top, left, eh, ew, _ = _sample_box(
        seeds, shape, area, (1.0 / ratio[1], 1.0 / ratio[0]), strict=True
    )
    rows = tf.range(shape[0])[:, None]
    cols = tf.range(shape[1])[None, :]
    mask = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    noise = tf.random.stateless_uniform(shape, seeds[3], dtype=tf.float32)
    return tf.where(mask[..., None], noise, image)


# --- composed views ---------------------------------------------------------------------------


def train_view(image: Tensor, seed: Tensor, cfg: ml_collections.ConfigDict) -> Tensor:
    """uint8 image -> augmented, normalised float32 [S, S, 3] for training (`input` config)."""
    tf = _tf()
    size = cfg.image_size
    x = to_unit(image)
    # Each augmentation owns a fixed sub-seed, so switching one on leaves the others unchanged.
    if cfg.train_resize == "random_resized_crop":
        x = random_resized_crop(x, _fold(seed, 0), size, cfg.crop_scale, cfg.crop_ratio)
    else:
        x = random_crop(resize_shorter(x, cfg.resize_size), _fold(seed, 0), size)
    if cfg.flip:
        x = random_flip(x, _fold(seed, 1))
    if cfg.color_jitter is not None:
        b, c, s, h = cfg.color_jitter
        x = maybe(
            lambda y: color_jitter(y, _fold(seed, 2), b, c, s, h),
            x,
            _fold(seed, 3),
            cfg.color_jitter_prob,
        )
    a = cfg.affine
    x = maybe(
        lambda y: random_affine(y, _fold(seed, 4), a.degrees, a.translate, a.scale, a.shear),
        x,
        _fold(seed, 5),
        a.prob,
    )
    bl = cfg.blur
    x = maybe(
        lambda y: random_gaussian_blur(y, _fold(seed, 6), bl.sigma, bl.kernel),
        x,
        _fold(seed, 7),
        bl.prob,
    )
    er = cfg.random_erasing
    x = maybe(
        lambda y: random_erasing(y, _fold(seed, 8), er.area, er.ratio),
        x,
        _fold(seed, 9),
        er.prob,
    )
    x = tf.ensure_shape(x, [size, size, 3])
    return normalize(x, cfg.normalization)


def eval_view(image: Tensor, cfg: ml_collections.ConfigDict) -> Tensor:
    """uint8 image -> deterministic, normalised float32 [S, S, 3] for evaluation."""
    size = cfg.image_size
    x = to_unit(image)
    if cfg.eval_resize == "resize":
        x = resize(x, size)
    else:
        x = central_crop(resize_shorter(x, cfg.resize_size), size)
    return normalize(_tf().ensure_shape(x, [size, size, 3]), cfg.normalization)
