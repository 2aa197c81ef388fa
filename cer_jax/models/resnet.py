"""ResNet v1.5 (stride on the 3x3 conv of the bottleneck) in Flax NNX.

Layer names follow torchvision (`conv1`, `bn1`, `layer{1..4}/{j}/conv{1,2,3}`, `downsample_conv`,
`downsample_bn`) so that weight import is a renaming and a transpose. Padding is explicit and
symmetric, as in PyTorch: 'SAME' would pad strided convs asymmetrically and break parity with
ImageNet checkpoints. On CPU, each block's output is written once into its own buffer
(`xla_cpu.materialize`) rather than recomputed inside every consumer, and the stem's max pool
has a cheap gradient (`xla_cpu.max_pool`); GPU and TPU programs are the plain ones.
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from cer_jax.models import HEAD_DTYPE, ModelConfigError, ModelOutput, xla_cpu

STAGE_SIZES: dict[int, tuple[int, ...]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BOTTLENECK_DEPTHS = (50, 101, 152)

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _batch_norm(features: int, dtype: Dtype | None, rngs: nnx.Rngs, zero_scale: bool = False):
    return nnx.BatchNorm(
        features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        scale_init=nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init(),
        rngs=rngs,
    )


def _conv3x3(in_features: int, out_features: int, strides: int, dtype, rngs) -> nnx.Conv:
    return nnx.Conv(
        in_features,
        out_features,
        (3, 3),
        strides,
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=dtype,
        kernel_init=conv_init,
        rngs=rngs,
    )


def _conv1x1(in_features: int, out_features: int, strides: int, dtype, rngs) -> nnx.Conv:
    return nnx.Conv(
        in_features, out_features, (1, 1), strides, padding="VALID", use_bias=False,
        dtype=dtype, kernel_init=conv_init, rngs=rngs,
    )


def _downsample(in_features, out_features, strides, dtype, rngs):
    """The projection shortcut (conv, BN), or (None, None) where the identity fits."""
    if strides == 1 and in_features == out_features:
        return None, None
    return (
        _conv1x1(in_features, out_features, strides, dtype, rngs),
        _batch_norm(out_features, dtype, rngs),
    )


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion: ClassVar[int] = 1

    def __init__(self, in_features, features, strides, *, zero_init_last_bn, dtype, rngs):
        out_features = features * self.expansion
        self.conv1 = _conv3x3(in_features, features, strides, dtype, rngs)
        self.bn1 = _batch_norm(features, dtype, rngs)
        self.conv2 = _conv3x3(features, out_features, 1, dtype, rngs)
        self.bn2 = _batch_norm(out_features, dtype, rngs, zero_init_last_bn)
        self.downsample_conv, self.downsample_bn = _downsample(
            in_features, out_features, strides, dtype, rngs
        )

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x), use_running_average=ura)
        return xla_cpu.materialize(nnx.relu(x + y), self.conv1.kernel[...])


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 with 4x expansion (ResNet-50/101/152)."""

    expansion: ClassVar[int] = 4

    def __init__(self, in_features, features, strides, *, zero_init_last_bn, dtype, rngs):
        out_features = features * self.expansion
        self.conv1 = _conv1x1(in_features, features, 1, dtype, rngs)
        self.bn1 = _batch_norm(features, dtype, rngs)
        self.conv2 = _conv3x3(features, features, strides, dtype, rngs)
        self.bn2 = _batch_norm(features, dtype, rngs)
        self.conv3 = _conv1x1(features, out_features, 1, dtype, rngs)
        self.bn3 = _batch_norm(out_features, dtype, rngs, zero_init_last_bn)
        self.downsample_conv, self.downsample_bn = _downsample(
            in_features, out_features, strides, dtype, rngs
        )

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x), use_running_average=ura)
        return xla_cpu.materialize(nnx.relu(x + y), self.conv1.kernel[...])


class ResNet(nnx.Module):
    """ResNet v1.5 classifier: stem, four stages, global average pool, `head`."""

    HEAD_NAMES: ClassVar[tuple[str, ...]] = ("head",)

    def __init__(
        self,
        *,
        num_classes: int,
        depth: int = 50,
        width: int = 64,
        zero_init_last_bn: bool = True,
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if depth not in STAGE_SIZES:
            raise ModelConfigError(
                f"Unknown ResNet depth {depth} (config key model.depth); "
                f"choose one of {sorted(STAGE_SIZES)}."
            )
        if width < 1:  # was a ZeroDivisionError / shape traceback from the initialisers
            raise ModelConfigError(
                f"ResNet width (config key model.width) is {width}; use a whole number >= 1 "
                "(64 in ResNet-50, 16 in the smoke config).")
        block_cls = Bottleneck if depth in BOTTLENECK_DEPTHS else BasicBlock
        self.conv1 = nnx.Conv(
            3, width, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False, dtype=dtype,
            kernel_init=conv_init, rngs=rngs,
        )
        self.bn1 = _batch_norm(width, dtype, rngs)
        in_features = width
        for stage, num_blocks in enumerate(STAGE_SIZES[depth]):
            features = width * 2**stage
            blocks = []
            for j in range(num_blocks):
                strides = 2 if stage > 0 and j == 0 else 1
                blocks.append(
                    block_cls(in_features, features, strides, zero_init_last_bn=zero_init_last_bn,
                              dtype=dtype, rngs=rngs)
                )
                in_features = features * block_cls.expansion
            setattr(self, f"layer{stage + 1}", nnx.List(blocks))
        self.num_features = in_features
        self.head = nnx.Linear(in_features, num_classes, dtype=HEAD_DTYPE, rngs=rngs)

    def __call__(self, images: jax.Array, *, train: bool = False) -> ModelOutput:
        x = self.conv1(images)
        x = nnx.relu(self.bn1(x, use_running_average=not train))
        # PyTorch pads max pooling with -inf, as flax does.
        x = xla_cpu.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, train)
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = self.head(features)  # float32 (HEAD_DTYPE)
        return ModelOutput(logits=logits, features=features, head_logits=(logits,),
                           head_weights=(1.0,))


# The registry factory: the keyword-only constructor already has the factory signature, so
# cer_jax.models.default_options can read every option's default from it.
create = ResNet
