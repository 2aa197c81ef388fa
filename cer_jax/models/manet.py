"""MA-Net (Zhao, Liu, Wang, IEEE TIP 2021): global multi-scale and local attention features.

A ResNet-18 stem and first two stages feed two branches: four unshared local-attention branches,
one per quadrant of the stride-8 map (AttentionBlocks = BasicBlocks with CBAM), and one global
multi-scale branch (MulScaleBlocks). Each branch ends in its own linear head; the prediction is
0.6 * local + 0.4 * global. Attribute names mirror the authors' PyTorch modules (`layer3_1_p1`,
`conv1_2_1`, `downsample/0`, `cbam/SpatialGate/spatial/bn`, ...) so that their checkpoint maps
onto the state paths by renaming alone (see `cer_jax.pretrained.manet`). Reference: the
authors' release, github.com/zengqunzhao/MA-Net (model/manet.py).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from cer_jax.models import HEAD_DTYPE, ModelConfigError, ModelOutput, xla_cpu

PathBOrder = Literal["reverse", "forward"]
PATH_B_ORDERS = ("reverse", "forward")
LOCAL_WEIGHT, GLOBAL_WEIGHT = 0.6, 0.4

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), as the authors initialise.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias.
linear_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear(in_features: int, out_features: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    bound = 1.0 / math.sqrt(in_features)

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(in_features, out_features, kernel_init=linear_kernel_init,
                      bias_init=bias_init, dtype=dtype, rngs=rngs)


def conv(in_features: int, out_features: int, kernel_size: int, stride: int = 1, *,
         dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    """A bias-free conv padded like PyTorch's (k // 2 on each side, also for stride 2)."""
    pad = kernel_size // 2
    return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), stride,
                    padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                    dtype=dtype, rngs=rngs)


def batch_norm(features: int, *, momentum: float = 0.9, dtype: Any,
               rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults: momentum 0.1 is a running-average decay of 0.9."""
    return nnx.BatchNorm(features, momentum=momentum, epsilon=1e-5, dtype=dtype, rngs=rngs)


def shortcut(in_features: int, out_features: int, stride: int, *, dtype: Any,
             rngs: nnx.Rngs) -> nnx.List | None:
    """`downsample` = [1x1 conv (stride), BN] where the shape changes, else the identity."""
    if stride == 1 and in_features == out_features:
        return None
    return nnx.List([
        nnx.Conv(in_features, out_features, (1, 1), stride, padding="VALID", use_bias=False,
                 kernel_init=conv_init, dtype=dtype, rngs=rngs),
        batch_norm(out_features, dtype=dtype, rngs=rngs),
    ])


def apply_shortcut(downsample: nnx.List | None, x: jax.Array, train: bool) -> jax.Array:
    if downsample is None:
        return x
    return downsample[1](downsample[0](x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """ResNet-18 block: conv3x3(stride)-BN-ReLU-conv3x3-BN, + shortcut, ReLU."""

    def __init__(self, in_features: int, features: int, stride: int = 1, *, dtype: Any,
                 rngs: nnx.Rngs):
        self.conv1 = conv(in_features, features, 3, stride, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(features, dtype=dtype, rngs=rngs)
        self.conv2 = conv(features, features, 3, dtype=dtype, rngs=rngs)
        self.bn2 = batch_norm(features, dtype=dtype, rngs=rngs)
        self.downsample = shortcut(in_features, features, stride, dtype=dtype, rngs=rngs)

    def residual(self, x: jax.Array, train: bool) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        return self.bn2(self.conv2(y), use_running_average=not train)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return nnx.relu(self.residual(x, train) + apply_shortcut(self.downsample, x, train))


class ChannelGate(nnx.Module):
    """CBAM channel attention: a shared MLP over the average- and max-pooled map."""

    def __init__(self, features: int, reduction: int, *, dtype: Any, rngs: nnx.Rngs):
        hidden = features // reduction
        # The authors' `mlp` is Sequential(Flatten, Linear, ReLU, Linear): their mlp.1 / mlp.3.
        self.mlp = nnx.List([linear(features, hidden, dtype=dtype, rngs=rngs),
                             linear(hidden, features, dtype=dtype, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        def mlp(v):
            return self.mlp[1](nnx.relu(self.mlp[0](v)))

        logits = mlp(jnp.mean(x, axis=(1, 2))) + mlp(jnp.max(x, axis=(1, 2)))
        return x * nnx.sigmoid(logits)[:, None, None, :]


class BasicConv(nnx.Module):
    """CBAM's `BasicConv` as the spatial gate uses it: conv (no bias) then BN, no ReLU."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, dtype: Any,
                 rngs: nnx.Rngs):
        self.conv = conv(in_features, out_features, kernel_size, dtype=dtype, rngs=rngs)
        # PyTorch momentum 0.01 here, i.e. a running-average decay of 0.99.
        self.bn = batch_norm(out_features, momentum=0.99, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train)


class SpatialGate(nnx.Module):
    """CBAM spatial attention: [max, mean] over channels -> 7x7 conv -> BN -> sigmoid."""

    def __init__(self, *, dtype: Any, rngs: nnx.Rngs):
        self.spatial = BasicConv(2, 1, 7, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        pooled = jnp.concatenate(
            [jnp.max(x, axis=-1, keepdims=True), jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
        return x * nnx.sigmoid(self.spatial(pooled, train=train))


class CBAM(nnx.Module):
    def __init__(self, features: int, reduction: int = 16, *, dtype: Any, rngs: nnx.Rngs):
        self.ChannelGate = ChannelGate(features, reduction, dtype=dtype, rngs=rngs)
        self.SpatialGate = SpatialGate(dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.SpatialGate(self.ChannelGate(x), train=train)


class AttentionBlock(BasicBlock):
    """BasicBlock with CBAM after the second BN, before the residual add."""

    def __init__(self, in_features: int, features: int, stride: int = 1, *, dtype: Any,
                 rngs: nnx.Rngs):
        super().__init__(in_features, features, stride, dtype=dtype, rngs=rngs)
        self.cbam = CBAM(features, 16, dtype=dtype, rngs=rngs)

    def residual(self, x: jax.Array, train: bool) -> jax.Array:
        return self.cbam(super().residual(x, train), train=train)


class MulScaleBlock(nnx.Module):
    """conv3x3-BN-ReLU, four channel groups through two hierarchical paths, + shortcut, ReLU.

    Path A (conv1_2_k / bn1_2_k) runs groups 1->4; path B (conv2_2_k / bn2_2_k) runs 4->1 in the
    authors' current code ("reverse") and 1->4 in their 2021 release ("forward"), with which the
    MS-Celeb weights were trained. Group k always uses conv/bn number k, so both orders load the
    same weights.
    """

    def __init__(self, in_features: int, features: int, stride: int = 1, *,
                 path_b_order: PathBOrder, dtype: Any, rngs: nnx.Rngs):
        self.path_b_order = path_b_order
        self.scale_width = width = features // 4
        self.conv1 = conv(in_features, features, 3, stride, dtype=dtype, rngs=rngs)
        self.bn1 = batch_norm(features, dtype=dtype, rngs=rngs)
        for path in (1, 2):
            for k in range(1, 5):
                setattr(self, f"conv{path}_2_{k}", conv(width, width, 3, dtype=dtype, rngs=rngs))
                setattr(self, f"bn{path}_2_{k}", batch_norm(width, dtype=dtype, rngs=rngs))
        self.downsample = shortcut(in_features, features, stride, dtype=dtype, rngs=rngs)

    def path(self, groups: list[jax.Array], path: int, order: list[int], train: bool
             ) -> jax.Array:
        """Runs the groups in `order` (0-based); each adds ReLU(previous output) to its input."""
        outputs: dict[int, jax.Array] = {}
        previous = None
        for k in order:
            x = groups[k] if previous is None else nnx.relu(previous) + groups[k]
            conv_k = getattr(self, f"conv{path}_2_{k + 1}")
            bn_k = getattr(self, f"bn{path}_2_{k + 1}")
            outputs[k] = previous = bn_k(conv_k(x), use_running_average=not train)
        return jnp.concatenate([outputs[k] for k in range(4)], axis=-1)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        groups = jnp.split(y, 4, axis=-1)
        order_b = [3, 2, 1, 0] if self.path_b_order == "reverse" else [0, 1, 2, 3]
        y = self.path(groups, 1, [0, 1, 2, 3], train) + self.path(groups, 2, order_b, train)
        return nnx.relu(y + apply_shortcut(self.downsample, x, train))


def make_layer(block: type, in_features: int, features: int, stride: int, *, num_blocks: int = 2,
               **kwargs: Any) -> nnx.List:
    """Like torchvision's `_make_layer`: the first block strides / widens, the rest keep shape."""
    blocks = [block(in_features, features, stride, **kwargs)]
    blocks += [block(features, features, 1, **kwargs) for _ in range(num_blocks - 1)]
    return nnx.List(blocks)


def run_layer(layer: nnx.List, x: jax.Array, train: bool) -> jax.Array:
    for block in layer:
        x = block(x, train=train)
    return x


def global_average_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


class MANet(nnx.Module):
    """MA-Net on NHWC images whose height and width are multiples of 32 (224 in the paper).

    `path_b_order` defaults to "forward": the published MS-Celeb-1M weights use the 2021 code's
    forward order ("reverse" is the 2023 code's)."""

    HEAD_NAMES = ("fc_1", "fc_2")
    NUM_PATCHES = 4

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs, path_b_order: PathBOrder = "forward",
                 width: int = 64, dtype: Any = jnp.float32):
        if path_b_order not in PATH_B_ORDERS:
            raise ModelConfigError(
                f"MA-Net path_b_order (config key model.path_b_order) is {path_b_order!r}; use "
                "'reverse' (2023 code) or 'forward' (2021), or 'auto' in a config (what "
                "init.manet_code_version or the pre-trained weights imply).")
        if width < 4 or width % 4:
            raise ModelConfigError(
                f"MA-Net width (config key model.width) is {width}; use a multiple of 4 (64 in "
                "the paper) so that CBAM's reduction 16 and the four multi-scale groups keep at "
                "least one channel.")
        w = width
        kw = dict(dtype=dtype, rngs=rngs)
        self.dtype = dtype
        self.conv1 = conv(3, w, 7, 2, **kw)
        self.bn1 = batch_norm(w, **kw)
        self.layer1 = make_layer(BasicBlock, w, w, 1, **kw)
        self.layer2 = make_layer(BasicBlock, w, 2 * w, 2, **kw)
        for p in range(1, self.NUM_PATCHES + 1):
            setattr(self, f"layer3_1_p{p}", make_layer(AttentionBlock, 2 * w, 4 * w, 2, **kw))
            setattr(self, f"layer4_1_p{p}", make_layer(AttentionBlock, 4 * w, 8 * w, 1, **kw))
        ms = dict(path_b_order=path_b_order, **kw)
        self.layer3_2 = make_layer(MulScaleBlock, 2 * w, 4 * w, 2, **ms)
        self.layer4_2 = make_layer(MulScaleBlock, 4 * w, 8 * w, 2, **ms)
        self.fc_1 = linear(8 * w, num_classes, dtype=HEAD_DTYPE, rngs=rngs)
        self.fc_2 = linear(8 * w, num_classes, dtype=HEAD_DTYPE, rngs=rngs)

    def trunk(self, images: jax.Array, train: bool) -> jax.Array:
        """ResNet-18 stem, layer1 and layer2: the shared stride-8 map."""
        x = nnx.relu(self.bn1(self.conv1(images), use_running_average=not train))
        x = xla_cpu.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return run_layer(self.layer2, run_layer(self.layer1, x, train), train)

    def local_branch(self, x: jax.Array, train: bool) -> jax.Array:
        """Quadrants TL, TR, BL, BR each through their own layer3/layer4, then re-assembled."""
        h, w = x.shape[1] // 2, x.shape[2] // 2
        quadrants = [x[:, :h, :w], x[:, :h, w:], x[:, h:, :w], x[:, h:, w:]]
        outs = []
        for p, patch in enumerate(quadrants, start=1):
            y = run_layer(getattr(self, f"layer3_1_p{p}"), patch, train)
            outs.append(run_layer(getattr(self, f"layer4_1_p{p}"), y, train))
        top = jnp.concatenate(outs[:2], axis=2)
        bottom = jnp.concatenate(outs[2:], axis=2)
        return jnp.concatenate([top, bottom], axis=1)

    def global_branch(self, x: jax.Array, train: bool) -> jax.Array:
        return run_layer(self.layer4_2, run_layer(self.layer3_2, x, train), train)

    def __call__(self, images: jax.Array, *, train: bool = False) -> ModelOutput:
        height, width = images.shape[1:3]
        if height % 32 or width % 32:
            raise ModelConfigError(f"MA-Net needs image sizes divisible by 32 (config key "
                                   f"input.image_size); got {height}x{width}.")
        x = self.trunk(images.astype(self.dtype), train)
        local_features = global_average_pool(self.local_branch(x, train))
        global_features = global_average_pool(self.global_branch(x, train))
        local_logits = self.fc_1(local_features)  # float32 (HEAD_DTYPE)
        global_logits = self.fc_2(global_features)
        return ModelOutput(
            logits=LOCAL_WEIGHT * local_logits + GLOBAL_WEIGHT * global_logits,
            features=jnp.concatenate([local_features, global_features], axis=-1
                                     ).astype(jnp.float32),
            head_logits=(local_logits, global_logits),
            head_weights=(LOCAL_WEIGHT, GLOBAL_WEIGHT),
        )


def create(*, num_classes: int, rngs: nnx.Rngs, path_b_order: PathBOrder = "forward",
           width: int = 64, dtype: Any = jnp.float32) -> MANet:
    """Registry factory: `create_model("manet", num_classes=7, rngs=..., width=16)`.

    `path_b_order` defaults to "forward": the published MS-Celeb-1M weights use the 2021 code's
    forward order ("reverse" is the 2023 code's)."""
    return MANet(num_classes, rngs=rngs, path_b_order=path_b_order, width=width, dtype=dtype)
