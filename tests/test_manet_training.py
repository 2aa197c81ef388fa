"""One MA-Net training step through the trainer's own step against the authors' PyTorch network.

test_manet.py checks the whole network in eval mode and single blocks in train mode;
test_recipe_optimizers.py checks the optimizer given gradients. Here the whole network trains
one step in both: the recipe's loss (configs/manet.py), its gradients and every BatchNorm's
running statistics after the step, from the same weights (imported by cer_jax.pretrained's
MA-Net converter, as the trainer imports the authors' file).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from test_manet import TorchMANet, randomise

from cer_jax import sharding, steps, train_state
from cer_jax.config_loading import load_config
from cer_jax.pretrained import core
from cer_jax.pretrained import manet as convert_manet

NUM_CLASSES = 7
# Small enough for CPU; 4 x 64 px leaves 16 values per channel in the deepest BatchNorms.
IMAGES = np.random.default_rng(1).uniform(0, 1, (4, 64, 64, 3)).astype(np.float32)
LABELS = np.array([0, 3, 5, 1])


def capture_gradients() -> optax.GradientTransformation:
    """An optimizer that keeps the weights and stores the step's gradients as its state."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def torch_step(ref: torch.nn.Module):
    """The authors' loss, 0.6 * CE(local) + 0.4 * CE(global) (plain cross-entropy), one
    forward + backward in train mode; returns the loss and each BatchNorm's values per channel
    in its batch (PyTorch's running variance uses the unbiased batch variance)."""
    counts: dict[str, list[int]] = {}
    hooks = [m.register_forward_hook(
        lambda m, inputs, out, name=name: counts.setdefault(name, []).append(
            inputs[0].numel() // inputs[0].shape[1]))
        for name, m in ref.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    local, glob = ref.train()(torch.from_numpy(IMAGES.copy()).permute(0, 3, 1, 2))
    labels = torch.from_numpy(LABELS)
    ce = torch.nn.functional.cross_entropy
    loss = 0.6 * ce(local, labels) + 0.4 * ce(glob, labels)
    loss.backward()
    for hook in hooks:
        hook.remove()
    assert all(len(c) == 1 for c in counts.values())  # each BatchNorm updated once
    return loss.item(), {name: c[0] for name, c in counts.items()}


def leaf(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[int(key) if key.isdigit() else key]
    return np.asarray(tree)


def test_one_training_step_matches_pytorch():
    """Loss, gradients and running statistics of one step of the recipe, against PyTorch.

    Tolerances: float32 in both, summed in different orders through ~40 train-mode
    BatchNorms, some over 16 values a channel. Measured: loss 4e-7 relative, gradients within
    7e-6 of each tensor's largest, running means 6e-7 absolute, variances 1e-6 relative; the
    bounds (1e-5, 1e-4 of the largest, 1e-5, 1e-4) leave 10-20x for other CPUs and BLAS.
    Running variances are matched exactly, not by a loose tolerance: Flax averages in the biased
    batch variance, PyTorch the unbiased one (x n / (n - 1), 7 % for n = 16), so PyTorch's
    update is converted with each BatchNorm's n, counted by a forward hook.
    """
    config = load_config("configs/manet.py")
    config.model.width = 8  # size only
    model = nnx.eval_shape(lambda: train_state.create_model(config, NUM_CLASSES, seed=0))
    reverse = model.layer3_2[0].path_b_order == "reverse"  # "auto" without a checkpoint
    ref = randomise(TorchMANet(NUM_CLASSES, width=8, reverse=reverse), seed=7)
    # Copies: .numpy() shares the tensors' memory, which PyTorch's step updates in place (and
    # jnp.asarray of such a view may share it too on CPU).
    before = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    converted = convert_manet.convert(before, model)
    core.assign(model, converted.arrays, source="PyTorch", head_names=train_state.head_names(model),
                keep_head=True)

    tx = capture_gradients()
    graphdef, state = train_state.create_train_state(model, tx)
    mesh = sharding.create_mesh()
    step = steps.jit_train_step(graphdef, tx, mesh, num_classes=NUM_CLASSES,
                                label_smoothing=config.training.label_smoothing)
    batch = {"image": IMAGES, "label": LABELS.astype(np.int32)}
    state, metrics = step(sharding.replicate(state, mesh), sharding.to_global(batch, mesh))
    grads, rest = state["opt_state"], state["rest"]

    loss, counts = torch_step(ref)
    np.testing.assert_allclose(float(metrics["loss_sum"]) / len(LABELS), loss, rtol=1e-5)

    modules = dict(ref.named_modules())
    for name in ("conv1.weight", "bn1.weight", "layer3_2.0.bn2_2_3.weight",
                 "layer4_2.1.bn1_2_2.bias", "layer3_1_p2.1.cbam.SpatialGate.spatial.bn.weight",
                 "layer4_1_p3.0.cbam.ChannelGate.mlp.1.weight", "fc_1.weight", "fc_1.bias",
                 "fc_2.weight"):
        module, attr = name.rsplit(".", 1)
        want = getattr(modules[module], attr).grad.numpy()
        path = convert_manet.state_path(name, want.ndim)
        got = leaf(grads, path)
        np.testing.assert_allclose(got, convert_manet.to_flax_layout(want), rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max(), err_msg=path)

    after = ref.state_dict()
    for name, n in counts.items():
        bn = modules[name]
        momentum = bn.momentum  # PyTorch's: the weight of the new batch
        path = name.replace(".", "/")
        want_mean = after[f"{name}.running_mean"].numpy()
        np.testing.assert_allclose(leaf(rest, f"{path}/mean"), want_mean, rtol=1e-4, atol=1e-5,
                                   err_msg=path)
        old = before[f"{name}.running_var"]
        unbiased = (after[f"{name}.running_var"].numpy() - (1 - momentum) * old) / momentum
        want_var = (1 - momentum) * old + momentum * unbiased * (n - 1) / n
        np.testing.assert_allclose(leaf(rest, f"{path}/var"), want_var, rtol=1e-4,
                                   err_msg=path)
