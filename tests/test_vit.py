"""ViT: geometry of the big_vision sizes, shapes, dtypes, train/eval modes, learning progress,
and that models (and weight import) load without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import train_losses

from cer_jax.models import create_model, vit
from cer_jax.models.vit import ViT


def _param_count(model) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


@pytest.mark.parametrize("variant,count", [
    # timm's vit_{tiny,small,base,large}_patch16_224 / vit_base_patch32_224 with 1000 classes.
    ("Ti/16", 5_717_416), ("S/16", 22_050_664), ("B/16", 86_567_656), ("B/32", 88_224_232),
    ("L/16", 304_326_632),
])
def test_big_vision_sizes(variant, count):
    model = nnx.eval_shape(lambda: create_model("vit", num_classes=1000, rngs=nnx.Rngs(0),
                                                variant=variant))
    assert _param_count(model) == count


def test_forward_shapes_cls_and_gap():
    images = jnp.ones((2, 32, 32, 3))
    cls = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=32)
    out = cls(images)
    assert out.logits.shape == (2, 7) and out.features.shape == (2, 32)
    assert cls.pos_embedding.shape == (1, 17, 32)
    assert out.head_logits[0] is out.logits and out.head_weights == (1.0,)
    assert type(cls).HEAD_NAMES == ("head",)
    gap = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=32,
                       pool="gap", representation_size=16)
    out = gap(images)
    assert out.features.shape == (2, 16) and gap.pos_embedding.shape == (1, 16, 32)
    assert not hasattr(gap, "cls")
    assert float(jnp.max(jnp.abs(out.features))) <= 1.0  # tanh pre-logits


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=16,
                         dtype=jnp.bfloat16, head_zeroinit=False)
    out = model(jnp.ones((1, 16, 16, 3)))
    assert out.logits.dtype == jnp.float32 and out.features.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }
    reference = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8",
                             image_size=16, head_zeroinit=False)
    np.testing.assert_allclose(out.logits, reference(jnp.ones((1, 16, 16, 3))).logits,
                               atol=0.1, rtol=0.05)


def test_dropout_and_stochastic_depth_only_in_training():
    model = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=16,
                         dropout=0.2, attention_dropout=0.2, stochastic_depth=0.5,
                         head_zeroinit=False)
    assert [b.drop_path.rate for b in model.blocks] == [0.0, 0.5]  # linear over depth
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    eval_1, eval_2 = model(images).logits, model(images, train=False).logits
    np.testing.assert_array_equal(eval_1, eval_2)
    train_1, train_2 = model(images, train=True).logits, model(images, train=True).logits
    assert not np.allclose(train_1, eval_1) and not np.allclose(train_1, train_2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(variant="X/16"), r"Unknown ViT variant 'X/16' \(config key model.variant\)"),
    (dict(variant="B"), r"Unknown ViT variant 'B' \(config key model.variant\)"),
    (dict(variant="test/8", image_size=20),
     r"model.image_size=20 is not divisible by the patch size 8 of ViT variant 'test/8'"),
    (dict(variant="test/8", pool="map"), r"Unknown ViT pool 'map' \(config key model.pool\)"),
    (dict(variant="test/8", dropout=1.0),
     r"^model\.dropout=1\.0 is a drop probability: choose one in \[0, 1\)\.$"),
    (dict(variant="test/8", stochastic_depth=-0.1),
     r"^model\.stochastic_depth=-0\.1 is a drop probability: choose one in \[0, 1\)\.$"),
    # Was a NaN loss at the first step, which the trainer blamed on the learning rate.
    (dict(variant="test/8", layer_norm_eps=-1.0), r"^model\.layer_norm_eps=-1\.0 must be > 0 "),
    (dict(variant="test/8", layer_norm_eps=0.0), r"^model\.layer_norm_eps=0\.0 must be > 0 "),
])
def test_bad_options_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViT(num_classes=2, rngs=nnx.Rngs(0), **kwargs)


def test_wrong_image_size_is_a_clear_error():
    model = create_model("vit", num_classes=2, rngs=nnx.Rngs(0), variant="test/8", image_size=16)
    with pytest.raises(ValueError, match=r"Images of size 24x24 give 3x3 patches, but this ViT "
                                         r"was built for model.image_size=16"):
        model(jnp.ones((1, 24, 24, 3)))


def test_other_image_shape_with_as_many_patches_is_a_clear_error():
    """64x16 images give 8x2 patches, as many as the 4x4 of 32x32 ones, in another layout."""
    model = create_model("vit", num_classes=2, rngs=nnx.Rngs(0), variant="test/8", image_size=32)
    with pytest.raises(ValueError, match=r"Images of size 64x16 give 8x2 patches, but this ViT "
                                         r"was built for model.image_size=32"):
        model(jnp.ones((1, 64, 16, 3)))


def test_tiny_vit_learns_with_a_jitted_pure_step():
    model = create_model("vit", num_classes=3, rngs=nnx.Rngs(0), variant="test/8", image_size=16,
                         dropout=0.1, stochastic_depth=0.1)
    images = jax.random.normal(jax.random.key(1), (12, 16, 16, 3))
    labels = jnp.arange(12) % 3
    losses = train_losses(model, images, labels, steps=30, learning_rate=3e-3)
    assert losses[-1] < 0.3 * losses[0], losses


def test_models_and_weight_import_load_without_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from flax import nnx\n"
        "import cer_jax.models.vit, cer_jax.models.resnet\n"
        "import cer_jax.models.manet, cer_jax.pretrained.manet\n"
        "import cer_jax.pretrained.vit, cer_jax.pretrained.resnet\n"
        "import cer_jax.data.pipeline, cer_jax.data.augment  # TensorFlow only when used\n"
        "from cer_jax.models import create_model\n"
        "create_model('vit', num_classes=2, rngs=nnx.Rngs(0), variant='test/8', image_size=16)\n"
        "assert sys.modules['tensorflow'] is None\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _attention_pair(dtype=None):
    """Our SelfAttention and flax's MultiHeadAttention with the same random parameters."""
    kwargs = dict(broadcast_dropout=False, decode=False, dtype=dtype)
    ours = vit.SelfAttention(3, 12, rngs=nnx.Rngs(0), **kwargs)
    flax_mha = nnx.MultiHeadAttention(3, 12, rngs=nnx.Rngs(1), **kwargs)
    params = nnx.state(ours, nnx.Param)
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape), params)
    nnx.update(ours, params)
    nnx.update(flax_mha, params)
    return ours, flax_mha


def test_cpu_self_attention_equals_flax_attention_with_gradients():
    """The fused-QKV, heads-first attention XLA:CPU runs computes nnx.MultiHeadAttention, and
    is what a CPU program contains (one projection matmul of 3 x 12 outputs).

    With these unscaled random weights the gradients reach ~100 and float32 rounding, which
    differs between processors' kernels, moves them by ~1e-4 (seen on an AVX-512 machine), so
    the tolerance is relative to the largest gradient; a wrong formula is off by O(1) of it."""
    ours, flax_mha = _attention_pair()
    x = jax.random.normal(jax.random.key(5), (2, 7, 12))
    assert "x7x36xf32" in jax.jit(lambda x: ours(x, deterministic=True)).lower(x).as_text()
    np.testing.assert_allclose(ours(x, deterministic=True), flax_mha(x, deterministic=True),
                               rtol=1e-5, atol=1e-5)

    def loss(module, x):
        return jnp.sum(jnp.sin(module(x, deterministic=True)))

    got = jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(ours, x))
    want = jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(flax_mha, x))
    scale = max(float(np.abs(w).max()) for w in want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale)


def test_attention_dropout_takes_flax_path():
    """With attention dropout active, the output is flax's (same parameters, same RNG stream)."""
    kwargs = dict(broadcast_dropout=False, decode=False, dropout_rate=0.5)
    ours = vit.SelfAttention(3, 12, rngs=nnx.Rngs(0), **kwargs)
    flax_mha = nnx.MultiHeadAttention(3, 12, rngs=nnx.Rngs(0), **kwargs)
    x = jax.random.normal(jax.random.key(5), (2, 7, 12))
    got, want = ours(x, deterministic=False), flax_mha(x, deterministic=False)
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got, ours(x, deterministic=True), atol=1e-3)


def test_cpu_self_attention_keeps_flax_dtypes():
    ours, flax_mha = _attention_pair(jnp.bfloat16)
    x = jax.random.normal(jax.random.key(5), (2, 7, 12))
    got, want = ours(x, deterministic=True), flax_mha(x, deterministic=True)
    assert got.dtype == want.dtype == jnp.bfloat16
    # One bfloat16 step at the largest outputs (~48); the CPU path's bfloat16 softmax was 0.5 off.
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=0,
                               atol=0.25)


def test_exact_gelu_is_pytorchs_erf_form():
    """Against jax's erfc form (an independent expansion) over the whole useful range."""
    x = jnp.linspace(-12.0, 12.0, 10_001)
    np.testing.assert_allclose(vit.gelu(x, approximate=False),
                               jax.nn.gelu(x, approximate=False), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(vit.gelu(x, approximate=True),
                                  jax.nn.gelu(x, approximate=True))


@pytest.mark.parametrize("approximate", [False, True])
def test_bfloat16_gelu_is_the_float32_gelu_rounded_once(approximate):
    """In bfloat16, 0.5 + 0.5 * erf(x / sqrt 2) cancels in the negative tail: GELU(-3) came out
    -0.0059 for -0.0040, and 0 below -3.25. PyTorch computes bfloat16 GELU in float32; so does
    the model, to within one bfloat16 rounding, jitted or not."""
    x = jnp.linspace(-8.0, 4.0, 4_801).astype(jnp.bfloat16)
    want = jax.nn.gelu(x.astype(jnp.float32), approximate=approximate)
    for fn in (vit.gelu, jax.jit(vit.gelu, static_argnums=1)):
        got = fn(x, approximate)
        assert got.dtype == jnp.bfloat16
        # atol: float32's own cancellation far in the tail (the float32 test above)
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2**-8, atol=2e-6)


def test_stochastic_depth_drops_whole_examples_and_rescales_the_kept():
    """Drop path (timm's DropPath): each example's residual branch is dropped whole, or kept
    and scaled by 1 / (1 - rate), so its expectation is unchanged."""
    model = create_model("vit", num_classes=7, rngs=nnx.Rngs(0), variant="test/8", image_size=16,
                         stochastic_depth=0.5)
    drop_path = model.blocks[1].drop_path
    rate = drop_path.rate
    out = np.asarray(drop_path(jnp.ones((512, 5, 4)), deterministic=False))
    per_example = out.reshape(512, -1)
    assert set(np.unique(per_example)) == {0.0, 1.0 / (1.0 - rate)}
    assert (per_example == per_example[:, :1]).all()  # every token and channel alike
    kept = (per_example[:, 0] > 0).mean()
    assert abs(kept - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / 512)


def test_bfloat16_attention_takes_the_softmax_in_float32():
    """bfloat16 attention weights are the float32 softmax, rounded once, on the CPU path as on
    flax's (GPU / TPU: jax.nn.dot_product_attention); the CPU path took it in bfloat16, 4 % off.
    One token per position (x = I), q = A, k = v = out = I: the output is the weights."""
    length = 16  # head_dim 16: the 1 / sqrt(head_dim) scaling is exact
    attn = vit.SelfAttention(1, length, dtype=jnp.bfloat16, decode=False, rngs=nnx.Rngs(0))
    a = (16 * jax.random.normal(jax.random.key(0), (length, length))).astype(jnp.bfloat16)
    eye = jnp.eye(length)
    attn.query.kernel[...] = a.astype(jnp.float32)[:, None, :]
    for proj in (attn.key, attn.value):
        proj.kernel[...] = eye[:, None, :]
    attn.out.kernel[...] = eye[None]
    for proj in (attn.query, attn.key, attn.value, attn.out):
        proj.bias[...] = jnp.zeros_like(proj.bias[...])
    want = jax.nn.softmax(a.astype(jnp.float32) / 4)
    x = eye[None]
    paths = {"cpu": attn,
             "flax": lambda x, **kw: nnx.MultiHeadAttention.__call__(attn, x, **kw)}
    for name, path in paths.items():
        got = path(x, deterministic=True)[0]
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=2**-8, atol=1e-30,
                                   err_msg=name)
