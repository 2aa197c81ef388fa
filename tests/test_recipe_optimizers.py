"""Each production recipe's optimizer (configs/vit.py, manet.py, resnet50.py) against PyTorch's
own: the same parameters, the same gradients, a few steps, the same weights.

The PyTorch side is written from the recipes' stated rules, not from cer_jax's code: AdamW with
decoupled decay on the dense / convolution kernels after clipping the global gradient norm (ViT);
SGD with momentum and L2 decay on every parameter, norms and biases included (MA-Net, the
authors' PyTorch SGD); Nesterov SGD with L2 decay on kernels only (ResNet); and for each, the
head in its own parameter group at head_lr_multiplier times the learning rate.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from cer_jax import optim, train_state
from cer_jax.config_loading import load_config

torch = pytest.importorskip("torch")

# Test size: the recipes' optimizers on small networks of the same architecture.
SIZES = {
    "vit": {"variant": "test/8"},
    "manet": {"width": 8},
    "resnet50": {"width": 8},
}
STEPS = 3
# The classification heads of each network (MA-Net has two, fc_1 and fc_2, per manet.md).
HEADS = {"vit": ("head",), "manet": ("fc_1", "fc_2"), "resnet50": ("head",)}


def _named_leaves(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        out.update(_named_leaves(value, name) if isinstance(value, dict)
                   else {name: np.asarray(value)})
    return out


def _torch_optimizer(config, params: dict[str, torch.nn.Parameter], head_names):
    """The recipe's optimizer in PyTorch, with one parameter group per (head?, decayed?)."""
    opt = config.optimizer
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in params.items():
        is_head = name.split("/")[0] in head_names
        decayed = opt.decay_norms_and_biases or name.endswith("/kernel")
        groups.setdefault((is_head, decayed), []).append(param)
    param_groups = [
        {"params": members, "lr": opt.lr * (opt.head_lr_multiplier if is_head else 1.0),
         "weight_decay": opt.weight_decay if decayed else 0.0}
        for (is_head, decayed), members in groups.items()
    ]
    if opt.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps)
    assert opt.name == "sgd", opt.name
    return torch.optim.SGD(param_groups, lr=opt.lr, momentum=opt.momentum,
                           nesterov=opt.nesterov)


@pytest.mark.parametrize("member", ["vit", "manet", "resnet50"])
def test_the_recipe_optimizer_matches_pytorch(member):
    config = load_config(f"configs/{member}.py")
    config.model.update(SIZES[member])
    # The network's parameter tree (names and shapes) without initialising it; random values.
    model = nnx.eval_shape(lambda: train_state.create_model(config, num_classes=11, seed=0))
    _, shapes, _ = train_state.split_model(model)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.1, shapes)
    heads = train_state.head_names(model)
    assert heads == HEADS[member]  # what the recipes' x10 head learning rate reaches
    assert any(name.split("/")[0] in heads for name in _named_leaves(shapes))
    tx = optim.create_optimizer(config, optax.constant_schedule(config.optimizer.lr), params,
                                heads)
    # Large enough that ViT's clipping (norm 1.0) acts, different at every step.
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32) * 0.05, params)
             for _ in range(STEPS)]

    @jax.jit
    def step(params, opt_state, g):
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    jax_params = params
    for g in grads:
        jax_params, opt_state = step(jax_params, opt_state, g)

    initial = _named_leaves(params)
    torch_params = {name: torch.nn.Parameter(torch.tensor(value.copy()))
                    for name, value in initial.items()}
    torch_opt = _torch_optimizer(config, torch_params, heads)
    for g in grads:
        for name, value in _named_leaves(g).items():
            torch_params[name].grad = torch.tensor(value)
        if config.optimizer.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(list(torch_params.values()),
                                           config.optimizer.grad_clip_norm)
        torch_opt.step()

    got = _named_leaves(jax_params)
    moved = 0
    for name, value in got.items():
        want = torch_params[name].detach().numpy()
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-8, err_msg=name)
        moved += not np.array_equal(value, initial[name])
    assert moved == len(got)  # every parameter trained
