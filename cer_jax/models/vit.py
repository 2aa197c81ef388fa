"""Vision Transformer (Dosovitskiy et al.) in Flax NNX, in the shape of big_vision's ViT.

Parameter layouts follow the original / AugReg `.npz` releases (attention kernels as
(width, heads, head_dim), the class token first, its position-embedding entry included), so
importing those files is a renaming. Differences from big_vision, chosen for parity with the
PyTorch checkpoints users also bring: GELU is exact by default (Hugging Face and timm use the
exact form, big_vision the tanh approximation; `gelu_approximate=True` restores it), and the
LayerNorm epsilon is an option (`layer_norm_eps`; big_vision and timm use 1e-6, Hugging Face's
google/vit-* configs 1e-12).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from cer_jax.models import HEAD_DTYPE, ModelConfigError, ModelOutput

# name -> (width, depth, mlp_dim, num_heads); big_vision sizes plus tiny ones for tests and
# CPU smoke runs.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "test": (32, 2, 64, 2),
    "mu": (64, 4, 128, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


def parse_variant(variant: str) -> tuple[str, int]:
    """'B/16' -> ('B', 16), with an error that names the config key."""
    name, _, patch = variant.partition("/")
    if name not in VARIANTS or not patch.isdigit() or int(patch) < 1:
        raise ModelConfigError(
            f"Unknown ViT variant {variant!r} (config key model.variant); expected "
            f"'<size>/<patch>' with size one of {', '.join(VARIANTS)}, e.g. 'B/16'."
        )
    return name, int(patch)


class SelfAttention(nnx.MultiHeadAttention):
    """`nnx.MultiHeadAttention` of a sequence with itself; on CPU, computed in the layout XLA:CPU
    runs fastest.

    The parameters are flax's (query / key / value kernels (width, heads, head_dim), out kernel
    (heads, head_dim, width)), so checkpoints and weight import are unchanged. On CPU the three
    projections run as one matmul against the concatenated kernels, and the two attention
    products as [batch, heads, positions, head_dim] batched matmuls: fewer, larger matmuls and
    one transpose instead of six (with the erf GELU below, ViT-B/16's train step at 224 px,
    batch 8 went from 7.00 to 6.56 s). GPU and TPU programs keep flax's code
    (`platform_dependent`), and attention dropout always takes it. Without dropout, flax's
    path is `jax.nn.dot_product_attention`: softmax in float32, as here.
    """

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        def flax_path(x):
            return nnx.MultiHeadAttention.__call__(self, x, deterministic=deterministic)

        if self.dropout_rate > 0.0 and not deterministic:
            return flax_path(x)
        return jax.lax.platform_dependent(x, cpu=self._fused, default=flax_path)

    def _fused(self, x: jax.Array) -> jax.Array:
        *batch, length, width = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        projections = (self.query, self.key, self.value)
        kernel = jnp.concatenate(
            [p.kernel[...].reshape(width, heads * head_dim) for p in projections], axis=1)
        bias = jnp.concatenate([p.bias[...].reshape(heads * head_dim) for p in projections])
        x, kernel, bias = self.qkv_promote_dtype((x, kernel, bias), dtype=self.dtype)
        qkv = jnp.matmul(x, kernel, precision=self.precision) + bias
        qkv = qkv.reshape(*batch, length, 3, heads, head_dim)
        # -> [3, *batch, heads, length, head_dim]
        query, key, value = jnp.moveaxis(qkv, (-3, -2), (0, -3))
        query = query / jnp.sqrt(head_dim).astype(query.dtype)
        logits = jnp.matmul(query, jnp.swapaxes(key, -1, -2), precision=self.precision)
        # The softmax in float32, as flax's path (jax.nn.dot_product_attention) takes it: in
        # bfloat16, `logits - max` rounds (weights 4 % off). The logits stay in the compute
        # dtype, so that the backward pass's matmuls do too.
        weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
                                 ).astype(query.dtype)
        out = jnp.swapaxes(jnp.matmul(weights, value, precision=self.precision), -3, -2)
        out = out.reshape(*batch, length, heads * head_dim)
        out_kernel = self.out.kernel[...].reshape(heads * head_dim, -1)
        out, out_kernel, out_bias = self.out_promote_dtype(
            (out, out_kernel, self.out.bias[...]), dtype=self.dtype)
        return jnp.matmul(out, out_kernel, precision=self.precision) + out_bias


def gelu(x: jax.Array, approximate: bool) -> jax.Array:
    """GELU; the exact form as PyTorch writes it, x * (1 + erf(x / sqrt(2))) / 2.

    jax's exact GELU uses erfc (accurate far into the negative tail, where GELU is ~0), which
    XLA expands into two approximations, an exp and selects; erf is one rational polynomial
    (on CPU, 8x197x3072 values: 7.7 ms against 2.1 ms).

    Both forms are computed in float32 and rounded once, as PyTorch's kernels compute bfloat16:
    in bfloat16, `0.5 + 0.5 * erf` (or `tanh`) cancels in the negative tail, which came out
    zero below x = -3.25 and 30-50 % off between -3 and -2.5.
    """
    dtype = x.dtype
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    if approximate:
        return nnx.gelu(x, approximate=True).astype(dtype)
    return (x * (0.5 + 0.5 * jax.lax.erf(x * 2**-0.5))).astype(dtype)


class MlpBlock(nnx.Module):
    def __init__(self, width, mlp_dim, *, dropout, gelu_approximate, dtype, rngs):
        init = nnx.initializers.xavier_uniform()
        bias_init = nnx.initializers.normal(1e-6)
        self.fc1 = nnx.Linear(width, mlp_dim, dtype=dtype, kernel_init=init, bias_init=bias_init,
                              rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, width, dtype=dtype, kernel_init=init, bias_init=bias_init,
                              rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.gelu_approximate = gelu_approximate

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = gelu(self.fc1(x), self.gelu_approximate)
        x = self.dropout(x, deterministic=not train)
        return self.fc2(x)


class EncoderBlock(nnx.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); dropout and stochastic depth
    (whole-sample dropout of each residual branch) act only when training."""

    def __init__(self, width, mlp_dim, num_heads, *, dropout, attention_dropout, drop_path,
                 layer_norm_eps, gelu_approximate, dtype, rngs):
        self.norm1 = nnx.LayerNorm(width, epsilon=layer_norm_eps, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(
            num_heads, width, dtype=dtype, dropout_rate=attention_dropout, broadcast_dropout=False,
            kernel_init=nnx.initializers.xavier_uniform(), decode=False, rngs=rngs,
        )
        self.norm2 = nnx.LayerNorm(width, epsilon=layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = MlpBlock(width, mlp_dim, dropout=dropout, gelu_approximate=gelu_approximate,
                            dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        # Broadcasting over tokens and channels drops a sample's whole branch.
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        det = not train
        y = self.norm1(x)
        y = self.attn(y, deterministic=det)
        x = x + self.drop_path(self.dropout(y, deterministic=det), deterministic=det)
        y = self.mlp(self.norm2(x), train)
        return x + self.drop_path(self.dropout(y, deterministic=det), deterministic=det)


class ViT(nnx.Module):
    """ViT classifier: patches -> (+cls) -> +position embedding -> encoder -> pool -> head."""

    HEAD_NAMES: ClassVar[tuple[str, ...]] = ("head",)

    def __init__(
        self,
        *,
        num_classes: int,
        variant: str = "B/16",
        image_size: int = 224,
        pool: Literal["cls", "gap"] = "cls",
        representation_size: int | None = None,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        stochastic_depth: float = 0.0,
        layer_norm_eps: float = 1e-6,
        gelu_approximate: bool = False,
        head_zeroinit: bool = True,
        dtype: Dtype | None = None,
        rngs: nnx.Rngs,
    ):
        name, patch = parse_variant(variant)
        width, depth, mlp_dim, num_heads = VARIANTS[name]
        if image_size % patch:
            raise ModelConfigError(
                f"model.image_size={image_size} is not divisible by the patch size {patch} of "
                f"ViT variant {variant!r}; choose a multiple of {patch}."
            )
        if pool not in ("cls", "gap"):
            raise ModelConfigError(
                f"Unknown ViT pool {pool!r} (config key model.pool): 'cls' or 'gap'.")
        if not layer_norm_eps > 0:  # 0 or less: NaN at the first step, blamed on the lr
            raise ModelConfigError(
                f"model.layer_norm_eps={layer_norm_eps} must be > 0 (1e-6 as big_vision and "
                "timm, 1e-12 as Hugging Face's ViT).")
        for key, rate in (("dropout", dropout), ("attention_dropout", attention_dropout),
                          ("stochastic_depth", stochastic_depth)):
            if not 0.0 <= rate < 1.0:
                raise ModelConfigError(
                    f"model.{key}={rate} is a drop probability: choose one in [0, 1).")
        self.variant, self.patch_size, self.image_size, self.pool = variant, patch, image_size, pool
        self.embedding = nnx.Conv(3, width, (patch, patch), patch, padding="VALID", dtype=dtype,
                                  rngs=rngs)
        num_tokens = (image_size // patch) ** 2
        if pool == "cls":
            self.cls = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
            num_tokens += 1
        self.pos_embedding = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (1, num_tokens, width), jnp.float32)
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List([
            EncoderBlock(
                width, mlp_dim, num_heads, dropout=dropout, attention_dropout=attention_dropout,
                drop_path=stochastic_depth * i / max(depth - 1, 1), layer_norm_eps=layer_norm_eps,
                gelu_approximate=gelu_approximate, dtype=dtype, rngs=rngs,
            )
            for i in range(depth)
        ])
        self.encoder_norm = nnx.LayerNorm(width, epsilon=layer_norm_eps, dtype=dtype, rngs=rngs)
        # Optional pre-logits layer (dense + tanh) of the original ViT / AugReg checkpoints.
        self.pre_logits = (
            nnx.Linear(width, representation_size, dtype=dtype, rngs=rngs)
            if representation_size is not None
            else None
        )
        features = representation_size or width
        self.num_features = features
        head_init = (
            nnx.initializers.zeros_init() if head_zeroinit else nnx.initializers.lecun_normal()
        )
        self.head = nnx.Linear(features, num_classes, dtype=HEAD_DTYPE, kernel_init=head_init,
                               rngs=rngs)

    def __call__(self, images: jax.Array, *, train: bool = False) -> ModelOutput:
        x = self.embedding(images)
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        if self.pool == "cls":
            cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (n, 1, c))
            x = jnp.concatenate([cls, x], axis=1)
        pos_embedding = self.pos_embedding[...]
        side = self.image_size // self.patch_size
        # The grid, not only the token count: 64x16 images give as many patches as 32x32 ones,
        # in a layout the position embedding does not describe.
        if (h, w) != (side, side):
            raise ModelConfigError(
                f"Images of size {images.shape[1]}x{images.shape[2]} give {h}x{w} patches, but "
                f"this ViT was built for model.image_size={self.image_size}; resize the images or "
                "set model.image_size to their size."
            )
        x = self.dropout(x + pos_embedding.astype(x.dtype), deterministic=not train)
        for block in self.blocks:
            x = block(x, train)
        x = self.encoder_norm(x)
        x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
        if self.pre_logits is not None:
            x = jnp.tanh(self.pre_logits(x))
        logits = self.head(x)  # float32 (HEAD_DTYPE)
        features = x.astype(jnp.float32)
        return ModelOutput(logits=logits, features=features, head_logits=(logits,),
                           head_weights=(1.0,))


# The registry factory: the keyword-only constructor already has the factory signature, so
# cer_jax.models.default_options can read every option's default from it.
create = ViT
