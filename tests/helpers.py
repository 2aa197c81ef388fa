"""Plain helpers shared by several test files (fixtures live in conftest.py, not here)."""

from __future__ import annotations

import numpy as np
import optax
from flax import nnx

from cer_jax import sharding, train_state
from cer_jax import steps as cer_steps


def train_losses(model: nnx.Module, images, labels, *, steps: int,
                 learning_rate: float) -> list[float]:
    """Trains `model` with Adam through the trainer's own jitted step (cer_jax.steps) on one
    batch; returns the loss of every step."""
    tx = optax.adam(learning_rate)
    graphdef, state = train_state.create_train_state(model, tx)
    mesh = sharding.create_mesh()
    step = cer_steps.jit_train_step(graphdef, tx, mesh, num_classes=int(labels.max()) + 1)
    batch = sharding.to_global(
        {"image": np.asarray(images, np.float32), "label": np.asarray(labels, np.int32)}, mesh
    )
    state = sharding.replicate(state, mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    return losses


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Standard-normal NHWC float32 images."""
    return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def torch_logits(model, images: np.ndarray) -> np.ndarray:
    """Logits of a Hugging Face image classifier on NHWC numpy images (eval, no grad)."""
    import torch

    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()


def smoothed_cross_entropy(logits: np.ndarray, labels: np.ndarray, smoothing: float) -> np.ndarray:
    """Per-example cross-entropy against (1 - smoothing) one-hot + smoothing / K, in float64:
    the independent reference for the trainer's loss."""
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    targets = np.full(logits.shape, smoothing / k)
    targets[np.arange(len(labels)), labels] += 1.0 - smoothing
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -(targets * log_probs).sum(-1)


def texts_cut_off(fig) -> list[str]:
    """The texts of a matplotlib figure that run past its edges once drawn (1 px tolerance)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    cut = []
    for text in fig.findobj(Text):
        if text.get_visible() and text.get_text():
            box = text.get_window_extent(renderer)
            if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1:
                cut.append(text.get_text())
    return cut
