"""ResNet v1.5: shapes, dtypes, BatchNorm behaviour, learning progress."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import train_losses

from cer_jax.models import create_model
from cer_jax.models.resnet import ResNet


@pytest.mark.parametrize("depth,features", [(18, 32), (50, 128)])
def test_forward_shapes_and_dtypes(depth, features):
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=depth, width=4,
                         dtype=jnp.bfloat16)
    out = model(jnp.ones((2, 32, 32, 3)))
    assert out.logits.shape == (2, 7) and out.logits.dtype == jnp.float32
    assert out.features.shape == (2, features)
    assert out.head_logits[0] is out.logits and out.head_weights == (1.0,)
    assert type(model).HEAD_NAMES == ("head",)
    params = nnx.state(model, nnx.Param)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_resnet50_geometry_matches_torchvision():
    """25,557,032 parameters with a 1000-way head, as torchvision's resnet50 (v1.5)."""
    model = nnx.eval_shape(lambda: create_model("resnet", num_classes=1000, rngs=nnx.Rngs(0),
                                                depth=50))
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == 25_557_032
    assert model.layer2[0].conv2.strides == 2 and model.layer2[0].conv1.strides == 1


def test_last_bn_scale_zero_init_is_an_option():
    zero = create_model("resnet", num_classes=2, rngs=nnx.Rngs(0), depth=50, width=4)
    ones = create_model("resnet", num_classes=2, rngs=nnx.Rngs(0), depth=50, width=4,
                        zero_init_last_bn=False)
    np.testing.assert_array_equal(zero.layer3[1].bn3.scale[...], 0.0)
    np.testing.assert_array_equal(zero.layer3[1].bn2.scale[...], 1.0)
    np.testing.assert_array_equal(ones.layer3[1].bn3.scale[...], 1.0)
    basic = create_model("resnet", num_classes=2, rngs=nnx.Rngs(0), depth=18, width=4)
    np.testing.assert_array_equal(basic.layer1[0].bn2.scale[...], 0.0)


def test_batch_norm_updates_running_stats_with_momentum_0_9_only_in_training():
    model = create_model("resnet", num_classes=2, rngs=nnx.Rngs(0), depth=18, width=4)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3)) + 1.0
    model(x, train=False)
    np.testing.assert_array_equal(model.bn1.mean[...], 0.0)
    batch_mean = jnp.mean(model.conv1(x), axis=(0, 1, 2))
    model(x, train=True)
    np.testing.assert_allclose(model.bn1.mean[...], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    assert model.bn1.epsilon == 1e-5


def test_unknown_depth_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown ResNet depth 42 \(config key model.depth\); "
                                         r"choose one of \[18, 34, 50, 101, 152\]"):
        ResNet(num_classes=2, depth=42, rngs=nnx.Rngs(0))


def test_tiny_resnet_learns():
    model = create_model("resnet", num_classes=3, rngs=nnx.Rngs(0), depth=18, width=4)
    images = jax.random.normal(jax.random.key(1), (12, 32, 32, 3))
    labels = jnp.arange(12) % 3
    losses = train_losses(model, images, labels, steps=25, learning_rate=1e-2)
    assert losses[-1] < 0.3 * losses[0], losses
