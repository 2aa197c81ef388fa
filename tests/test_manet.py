"""MA-Net: sizes from the spec, stage shapes, head fusion, and parity with a PyTorch reference.

The PyTorch reference (cer_jax.bench.torch_ref) is written from the authors' release
(model/manet.py and CBAM's attention module), independently of cer_jax.models.manet; weights are
copied across with a name mapping that is written here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from cer_jax.bench import torch_ref
from cer_jax.models import ModelOutput, create_model
from cer_jax.models import manet as jmanet
from cer_jax.pretrained import core
from cer_jax.pretrained import manet as convert_manet

# The PyTorch reference is the authors' code (model/manet.py and CBAM's attention module, with a
# `width` knob for tiny variants), kept once in cer_jax.bench.torch_ref for the benchmark too.
TorchAttentionBlock = torch_ref.AttentionBlock
TorchMulScaleBlock = torch_ref.MulScaleBlock
TorchMANet = torch_ref.MANet


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so that every tensor matters in the comparison."""
    g = torch.Generator().manual_seed(seed)

    def rand(t, low, high):
        t.copy_(low + (high - low) * torch.rand(t.shape, generator=g))

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                rand(m.weight, 0.5, 1.0), rand(m.bias, -0.2, 0.2)
                rand(m.running_mean, -0.2, 0.2), rand(m.running_var, 0.5, 1.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = int(np.prod(m.weight.shape[1:]))
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / np.sqrt(fan_in))
                if m.bias is not None:
                    rand(m.bias, -0.2, 0.2)
    return module.eval()


def torch_to_state(state_dict) -> dict[str, np.ndarray]:
    """Independent mapping PyTorch name -> NNX state path, with Flax layouts."""
    out = {}
    for name, t in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        a = t.detach().numpy()
        name = name.replace("mlp.1.", "mlp.0.").replace("mlp.3.", "mlp.1.")  # Sequential indices
        prefix, leaf = name.rsplit(".", 1)
        if leaf == "weight" and a.ndim == 4:
            leaf, a = "kernel", a.transpose(2, 3, 1, 0)
        elif leaf == "weight" and a.ndim == 2:
            leaf, a = "kernel", a.T
        elif leaf == "weight":
            leaf = "scale"
        else:
            leaf = {"running_mean": "mean", "running_var": "var", "bias": "bias"}[leaf]
        out[prefix.replace(".", "/") + "/" + leaf] = a
    return out


def load_into(model: nnx.Module, arrays: dict[str, np.ndarray]) -> None:
    targets = core.model_arrays(model)
    assert sorted(targets) == sorted(arrays)
    for name, value in arrays.items():
        assert targets[name].get_value().shape == value.shape, name
        targets[name].set_value(jnp.asarray(value))


def random_model(seed: int, *, num_classes: int = 7, width: int = 8, **kw) -> jmanet.MANet:
    """A tiny MA-Net with random weights and BN statistics from numpy.

    Much cheaper on CPU than initialising through jax.random op by op; `create`'s own
    initialisation is checked in test_init_follows_the_authors.
    """
    model = nnx.eval_shape(lambda: create_model(
        "manet", num_classes=num_classes, rngs=nnx.Rngs(0), width=width, **kw))
    rng = np.random.default_rng(seed)
    for name, var in core.model_arrays(model).items():
        shape = var.get_value().shape
        if name.endswith("/kernel"):
            value = rng.normal(0, 1, shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif name.endswith(("/scale", "/var")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.uniform(-0.2, 0.2, shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    return model


IMAGES = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)


def nhwc(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(x.permute(0, 2, 3, 1).numpy())


def nchw(x: jax.Array) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------
# Sizes.


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def full_model():
    return nnx.eval_shape(lambda: create_model("manet", num_classes=7, rngs=nnx.Rngs(0)))


def test_parameter_counts_match_the_spec(full_model):
    params = nnx.state(full_model, nnx.Param)
    assert count(params) == 50_547_214
    part = lambda *names: sum(count(params[n]) for n in names)  # noqa: E731
    assert part("conv1", "bn1", "layer1", "layer2") == 683_072
    for p in (1, 2, 3, 4):
        assert part(f"layer3_1_p{p}", f"layer4_1_p{p}") == 10_577_392
    assert part("layer3_2", "layer4_2") == 7_547_392
    assert part("fc_1") == part("fc_2") == 3_591
    # BatchNorm statistics are state, not parameters.
    assert count(nnx.state(full_model, nnx.BatchStat)) > 0


@pytest.mark.parametrize("size, trunk, local, glob", [
    ((224, 224), (28, 28), (14, 14), (7, 7)),  # the paper's: four 14x14 patches -> 7x7 each
    ((160, 96), (20, 12), (10, 6), (5, 3)),
])
def test_stage_shapes(full_model, size, trunk, local, glob):
    graphdef, state = nnx.split(full_model)
    images = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)

    def stages(state, images):
        model = nnx.merge(graphdef, state)
        x = model.trunk(images, False)
        return x, model.local_branch(x, False), model.global_branch(x, False), model(images)

    x, local_map, global_map, output = jax.eval_shape(stages, state, images)
    assert x.shape == (2, *trunk, 128)
    assert local_map.shape == (2, *local, 512)
    assert global_map.shape == (2, *glob, 512)
    assert output.logits.shape == (2, 7) and output.features.shape == (2, 1024)
    assert [a.shape for a in output.head_logits] == [(2, 7), (2, 7)]


def test_rejects_sizes_not_divisible_by_32():
    model = nnx.eval_shape(lambda: create_model("manet", num_classes=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="divisible by 32.*input.image_size.*48x64"):
        model(jnp.zeros((1, 48, 64, 3)))


def test_rejects_bad_options():
    with pytest.raises(ValueError,
                       match=r"model.path_b_order.*'forward' \(2021\), or 'auto' in a config"):
        create_model("manet", num_classes=3, rngs=nnx.Rngs(0), path_b_order="sideways")
    with pytest.raises(ValueError, match="model.width"):
        create_model("manet", num_classes=3, rngs=nnx.Rngs(0), width=6)
    with pytest.raises(TypeError):
        create_model("manet", num_classes=3, rngs=nnx.Rngs(0), depth=18)


def test_init_follows_the_authors():
    block = jmanet.AttentionBlock(32, 64, 2, dtype=jnp.float32, rngs=nnx.Rngs(0))
    kernel = np.asarray(block.conv2.kernel[...])  # kaiming normal, fan-out = 3 * 3 * 64
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 64)), rtol=0.05)
    np.testing.assert_allclose(np.asarray(block.downsample[0].kernel[...]).std(),
                               np.sqrt(2.0 / 64), rtol=0.1)
    mlp = np.asarray(block.cbam.ChannelGate.mlp[0].kernel[...])  # PyTorch Linear default
    assert np.abs(mlp).max() <= 1 / 8 and mlp.std() > 0.8 / 8 / np.sqrt(3)
    bn = block.cbam.SpatialGate.spatial.bn
    assert float(bn.scale[...][0]) == 1.0 and float(bn.bias[...][0]) == 0.0
    np.testing.assert_array_equal(block.bn2.scale[...], np.ones(64))
    assert bn.momentum == pytest.approx(0.99) and block.bn1.momentum == pytest.approx(0.9)


# ----------------------------------------------------------------------------------------------
# Heads, path orders, training mode.


def test_prediction_is_point_six_local_plus_point_four_global():
    model = random_model(1)
    out = model(IMAGES)
    assert isinstance(out, ModelOutput) and out.head_weights == (0.6, 0.4)
    local, glob = out.head_logits
    np.testing.assert_allclose(out.logits, 0.6 * local + 0.4 * glob, rtol=1e-6, atol=1e-6)
    assert out.features.shape == (2, 128)
    np.testing.assert_allclose(model.fc_1(out.features[:, :64]), local, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.fc_2(out.features[:, 64:]), glob, rtol=1e-5, atol=1e-6)


def test_path_orders_give_different_outputs_from_the_same_weights():
    reverse = random_model(2, path_b_order="reverse")
    forward = random_model(3, path_b_order="forward")
    nnx.update(forward, nnx.state(reverse))
    a, b = reverse(IMAGES), forward(IMAGES)
    np.testing.assert_array_equal(a.head_logits[0], b.head_logits[0])  # local branch: same
    assert np.abs(np.asarray(a.head_logits[1] - b.head_logits[1])).max() > 1e-4


def test_train_mode_updates_batch_statistics_and_learns():
    model = random_model(4)
    images, labels = jnp.asarray(IMAGES), jnp.array([0, 5])
    before = np.asarray(model.layer3_1_p4[1].cbam.SpatialGate.spatial.bn.mean[...])

    def loss_fn(model):
        out = model(images, train=True)
        logp = [jax.nn.log_softmax(h) for h in out.head_logits]
        return -sum(w * jnp.take_along_axis(lp, labels[:, None], 1).mean()
                    for w, lp in zip(out.head_weights, logp, strict=True))

    @nnx.jit
    def step(model):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        params = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads))
        return loss

    losses = [float(step(model)) for _ in range(8)]
    after = np.asarray(model.layer3_1_p4[1].cbam.SpatialGate.spatial.bn.mean[...])
    assert not np.allclose(before, after)
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------------------------
# Parity with the PyTorch reference (eval mode, random weights and statistics).


def jax_block(block_cls, i, o, stride, **kw):
    return block_cls(i, o, stride, dtype=jnp.float32, rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("i, o, stride", [(32, 64, 2), (64, 64, 1)])
def test_attention_block_matches_pytorch(i, o, stride):
    ref = randomise(TorchAttentionBlock(i, o, stride), seed=i + stride)
    block = jax_block(jmanet.AttentionBlock, i, o, stride)
    load_into(block, torch_to_state(ref.state_dict()))
    x = torch.randn(2, i, 10, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x).numpy()
        expected_train = ref.train()(x).numpy()
    np.testing.assert_allclose(nchw(block(nhwc(x), train=False)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nchw(block(nhwc(x), train=True)), expected_train,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", ["reverse", "forward"])
@pytest.mark.parametrize("i, o, stride", [(32, 64, 2), (64, 64, 1)])
def test_mulscale_block_matches_pytorch(i, o, stride, order):
    ref = randomise(TorchMulScaleBlock(i, o, stride, reverse=order == "reverse"), seed=o + stride)
    block = jax_block(jmanet.MulScaleBlock, i, o, stride, path_b_order=order)
    load_into(block, torch_to_state(ref.state_dict()))
    x = torch.randn(2, i, 9, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(x).numpy()
    np.testing.assert_allclose(nchw(block(nhwc(x))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["reverse", "forward"])
def test_whole_model_matches_pytorch_through_the_converter(order):
    ref = randomise(TorchMANet(7, width=8, reverse=order == "reverse"), seed=7)
    model = random_model(0, path_b_order=order)
    checkpoint = {k: v.numpy() for k, v in ref.state_dict().items()}
    converted = convert_manet.convert(checkpoint, model)
    core.assign(model, converted.arrays, source="ref", head_names=("fc_1", "fc_2"),
                keep_head=True)
    x = torch.from_numpy(IMAGES).permute(0, 3, 1, 2)
    with torch.no_grad():
        local, glob = (t.numpy() for t in ref(x))
    out = model(nhwc(x))
    np.testing.assert_allclose(out.head_logits[0], local, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.head_logits[1], glob, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.logits, 0.6 * local + 0.4 * glob, rtol=1e-4, atol=1e-4)
