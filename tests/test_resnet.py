"""ResNet v1.5 and PointwiseConv: shapes, dtypes, BatchNorm behaviour, learning progress."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import train_losses

from cer_jax.models import create_model
from cer_jax.models.layers import PointwiseConv
from cer_jax.models.resnet import ResNet


@pytest.mark.parametrize("strides,size", [(1, 6), (2, 6), (2, 7)])
def test_pointwise_conv_equals_nnx_conv(strides, size):
    """Same outputs and gradients as a 1x1 nnx.Conv ('SAME' padding) with the same params."""
    pointwise = PointwiseConv(3, 5, strides, rngs=nnx.Rngs(0))
    conv = nnx.Conv(3, 5, (1, 1), strides, rngs=nnx.Rngs(1))
    assert conv.kernel.shape == pointwise.kernel.shape and conv.bias.shape == pointwise.bias.shape
    bias = jnp.linspace(-1.0, 1.0, 5)
    pointwise.bias.set_value(bias)
    conv.bias.set_value(bias)
    conv.kernel.set_value(pointwise.kernel[...])
    x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    np.testing.assert_allclose(pointwise(x), conv(x), atol=1e-5)

    def loss(module, x):
        return jnp.sum(jnp.sin(module(x)))

    grad_p = nnx.grad(loss)(pointwise, x)
    grad_c = nnx.grad(loss)(conv, x)
    np.testing.assert_allclose(grad_p["kernel"][...], grad_c["kernel"][...], atol=1e-4)
    np.testing.assert_allclose(grad_p["bias"][...], grad_c["bias"][...], atol=1e-4)


def test_pointwise_conv_without_bias_and_in_bfloat16():
    layer = PointwiseConv(4, 2, use_bias=False, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer.bias is None and layer.kernel[...].dtype == jnp.float32
    assert layer(jnp.ones((1, 2, 2, 4))).dtype == jnp.bfloat16


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


def test_every_1x1_conv_is_pointwise():
    model = create_model("resnet", num_classes=7, rngs=nnx.Rngs(0), depth=50, width=4)
    convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv | PointwiseConv)]
    assert not [c for c in convs if isinstance(c, nnx.Conv) and c.kernel_size == (1, 1)]
    assert sum(isinstance(c, PointwiseConv) for c in convs) == 16 * 2 + 4  # conv1, conv3, 4 proj.


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
