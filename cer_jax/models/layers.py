"""Building blocks shared by the models.

`PointwiseConv` is a 1x1 convolution written as (strided slice +) matmul. XLA on CPU computes
convolution weight gradients slowly, while a matmul's are fast; on GPU / TPU both lower to the
same kind of kernel. Its parameters are named and shaped exactly like `nnx.Conv`'s (`kernel`
(1, 1, in, out), optional `bias` (out,)) so checkpoints and weight import treat it as a conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.typing import Dtype, Initializer

default_kernel_init = nnx.initializers.lecun_normal()


class PointwiseConv(nnx.Module):
    """1x1 convolution on NHWC inputs, same results as `nnx.Conv(in, out, (1, 1), strides)`.

    With a 1x1 kernel, 'SAME' padding adds nothing and stride s reads pixels 0, s, 2s, ...; that
    is `x[:, ::s, ::s, :]` followed by a matmul over channels (PyTorch's padding=0 agrees).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        strides: int = 1,
        *,
        use_bias: bool = True,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = nnx.initializers.zeros_init(),
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.strides = strides
        self.use_bias = use_bias
        self.dtype = dtype
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), (1, 1, in_features, out_features), param_dtype)
        )
        self.bias = (
            nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) if use_bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        kernel = self.kernel[...].reshape(self.in_features, self.out_features)
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = dtypes.promote_dtype((x, kernel, bias), dtype=self.dtype)
        y = jnp.dot(x, kernel)
        if bias is not None:
            y = y + bias
        return y
