"""Plain helpers shared by several test files (fixtures live in conftest.py, not here)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
from flax import nnx


def train_losses(model: nnx.Module, images, labels, *, steps: int,
                 learning_rate: float) -> list[float]:
    """Adam on softmax CE with a pure, jitted step over `nnx.split` state, as the trainer does;
    returns the loss of every step."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = params.to_pure_dict(), rest.to_pure_dict()
    tx = optax.adam(learning_rate)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, rest, opt_state):
        def loss_fn(params):
            module = nnx.merge(graphdef, params, rest)
            logits = module(images, train=True).logits
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, nnx.state(module, nnx.Not(nnx.Param)).to_pure_dict()

        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

    losses = []
    for _ in range(steps):
        params, rest, opt_state, loss = step(params, rest, opt_state)
        losses.append(float(loss))
    return losses


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Standard-normal NHWC float32 images."""
    return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def torch_logits(model, images: np.ndarray) -> np.ndarray:
    """Logits of a Hugging Face image classifier on NHWC numpy images (eval, no grad)."""
    import torch

    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
