"""Train step, loss, optimizer and schedule on tiny models and random arrays (no data layer)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import smoothed_cross_entropy

from cer_jax import optim, sharding, steps, train_state
from cer_jax.config_loading import load_config
from cer_jax.models import ModelOutput


def _config(**optimizer) -> ml_collections.ConfigDict:
    config = load_config("configs/resnet50.py:smoke")
    config.model.width = 8
    for key, value in optimizer.items():
        config.optimizer[key] = value
    return config


def _tiny_vit_state(learning_rate: float, dtype: str = "float32", **optimizer):
    """A 16-px `test/8` ViT's replicated train state: (graphdef, state, tx, mesh)."""
    config = load_config("configs/vit.py:smoke")
    config.model.variant, config.model.image_size, config.model.dtype = "test/8", 16, dtype
    for key, value in optimizer.items():
        config.optimizer[key] = value
    model = train_state.create_model(config, num_classes=3, seed=0)
    _, params, _ = train_state.split_model(model)
    tx = optim.create_optimizer(config, optax.constant_schedule(learning_rate), params)
    graphdef, state = train_state.create_train_state(model, tx)
    mesh = sharding.create_mesh()
    return graphdef, sharding.replicate(state, mesh), tx, mesh


def test_per_example_loss_weights_heads_and_smooths_labels():
    rng = np.random.default_rng(0)
    local, global_ = rng.normal(size=(2, 5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 2, 3])
    output = ModelOutput(
        logits=0.6 * local + 0.4 * global_, features=jnp.zeros((5, 2)),
        head_logits=(jnp.asarray(local), jnp.asarray(global_)), head_weights=(0.6, 0.4),
    )
    got = steps.per_example_loss(output, jnp.asarray(labels), 4, label_smoothing=0.1)
    want = (0.6 * smoothed_cross_entropy(local, labels, 0.1)
            + 0.4 * smoothed_cross_entropy(global_, labels, 0.1))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_class_weighted_loss_is_the_weighted_mean():
    values = jnp.array([1.0, 2.0, 4.0])
    weights = jnp.array([1.0, 0.0, 3.0])
    assert float(steps.weighted_mean(values, weights)) == pytest.approx((1.0 + 12.0) / 4.0)


def test_weight_decay_mask_skips_norms_and_biases():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)},
              "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    config = _config(name="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.5)
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1), params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Only the kernel decays: update = -lr * wd * param.
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.05)
    for leaf in (updates["conv"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
        np.testing.assert_allclose(leaf, 0.0)


def test_the_vit_recipe_decays_kernels_only():
    """configs/vit.py's AdamW at test size: with zero gradients an update is decay alone. Not
    decayed: the class token, position embedding, norms and biases (attention's are 2-D)."""
    config = load_config("configs/vit.py")
    config.model.variant = "test/8"
    config.input.image_size = 32
    model = train_state.create_model(config, num_classes=3, seed=0)
    _, params, _ = train_state.split_model(model)
    tx = optim.create_optimizer(config, optax.constant_schedule(1.0), params,
                                train_state.head_names(model))
    ones = jax.tree.map(jnp.ones_like, params)  # the class token and head start at zero
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), ones)
    decayed = {"/".join(str(k.key) for k in path)
               for path, u in jax.tree_util.tree_leaves_with_path(updates) if np.any(u != 0)}
    assert {"cls", "pos_embedding"}.isdisjoint(decayed)
    assert {"embedding/kernel", "blocks/0/attn/query/kernel", "head/kernel"} <= decayed
    assert not any(name.endswith(("bias", "scale")) for name in decayed)


def test_head_learning_rate_multiplier_scales_only_the_head():
    params = {"head": {"kernel": jnp.ones((2, 2))}, "body": {"kernel": jnp.ones((2, 2))}}
    config = _config(name="sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                     head_lr_multiplier=10.0)
    tx = optim.create_optimizer(config, optax.constant_schedule(0.1), params, ("head",))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["body"]["kernel"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["kernel"], -1.0, rtol=1e-6)


def test_gradient_clipping_bounds_the_update():
    params = {"w": jnp.zeros((4, 4))}
    config = _config(name="sgd", lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                     grad_clip_norm=1.0)
    tx = optim.create_optimizer(config, optax.constant_schedule(1.0), params)
    updates, _ = tx.update({"w": jnp.full((4, 4), 100.0)}, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_step_schedule_decays_every_n_epochs():
    config = load_config("configs/manet.py")  # the authors' x0.1 every 15 epochs, no warm-up
    schedule = optim.create_schedule(config, total_steps=100 * 10, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(149)) == pytest.approx(0.01)
    assert float(schedule(150)) == pytest.approx(0.001)
    assert float(schedule(300)) == pytest.approx(0.0001)


@pytest.mark.parametrize("name", ["step", "exponential"])
def test_a_decay_after_warm_up_counts_epochs_from_the_warm_up_end(name):
    """PyTorch's SequentialLR(LinearLR, StepLR / ExponentialLR), stepped per batch / epoch: the
    decay's epoch e (counted from the warm-up's end) has lr * factor ** (e // every)."""
    config = _config()
    config.optimizer.lr = 1.0
    config.schedule.update(name=name, warmup_steps=None, warmup_epochs=3.0, step_every_epochs=2.0,
                           step_factor=0.1, decay_per_epoch=0.9)
    steps_per_epoch, warmup = 10, 30
    schedule = optim.create_schedule(config, total_steps=200, steps_per_epoch=steps_per_epoch)
    factor, every = (0.1, 2) if name == "step" else (0.9, 1)
    assert float(schedule(15)) == pytest.approx(0.5)  # half-way up the linear warm-up
    for step in range(warmup, 200, 5):
        epoch = (step - warmup) // steps_per_epoch
        assert float(schedule(step)) == pytest.approx(factor ** (epoch // every), rel=1e-5), step


def test_warmup_steps_zero_turns_the_warm_up_off():
    """warmup_steps overrides warmup_epochs when set, 0 included (it was read as unset, and the
    recipe's 2 warm-up epochs from lr 0 ran all the same)."""
    config = load_config("configs/vit.py")
    config.schedule.warmup_steps = 0
    schedule = optim.create_schedule(config, total_steps=100, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(config.optimizer.lr)


@pytest.mark.parametrize(("epochs", "steps_per_epoch", "steps"), [
    (1.1, 100, 110), (0.7, 10, 7), (2.5, 3, 8), (30, 22, 660)])
def test_epochs_round_up_to_whole_steps_without_float_noise(epochs, steps_per_epoch, steps):
    """1.1 x 100 is 110.00000000000001 in floating point: 110 steps, not 111."""
    assert optim.epochs_to_steps(epochs, steps_per_epoch) == steps


def test_warmup_cosine_schedule():
    config = load_config("configs/vit.py")  # 2 warm-up epochs, then cosine to 0
    lr = config.optimizer.lr
    schedule = optim.create_schedule(config, total_steps=100, steps_per_epoch=5)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(lr / 2)
    assert float(schedule(10)) == pytest.approx(lr)
    assert float(schedule(55)) == pytest.approx(lr / 2, rel=1e-4)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_names_the_key():
    config = _config()
    config.schedule.name = "linear"
    with pytest.raises(ValueError, match=r"schedule\.name"):
        optim.create_schedule(config, 10, 1)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("optimizer.lr", 0.0, "optimizer.lr=0.0 must be a finite number > 0."),
    ("schedule.warmup_epochs", -1.0, "schedule.warmup_epochs=-1.0 must be >= 0."),
    ("schedule.warmup_steps", -5, "schedule.warmup_steps=-5 must be >= 0."),
    ("schedule.end_lr_fraction", 1.5,
     "schedule.end_lr_fraction=1.5 must be in [0, 1] (schedule.name='cosine')."),
])
def test_a_schedule_that_cannot_train_names_the_key(key, value, message):
    config = _config()
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(optim.OptimConfigError) as e:
        optim.create_schedule(config, 10, 1)
    assert str(e.value) == message


@pytest.mark.parametrize(("name", "key", "value", "message"), [
    ("step", "step_factor", 10.0,
     "schedule.step_factor=10.0 must be in (0, 1] (schedule.name='step')."),
    ("step", "step_every_epochs", 0.0, "schedule.step_every_epochs=0.0 must be > 0."),
    ("exponential", "decay_per_epoch", 0.0,
     "schedule.decay_per_epoch=0.0 must be in (0, 1] (schedule.name='exponential')."),
])
def test_a_decay_that_would_grow_or_kill_the_lr_names_the_key(name, key, value, message):
    config = _config()
    config.schedule.name = name
    config.schedule[key] = value
    with pytest.raises(optim.OptimConfigError) as e:
        optim.create_schedule(config, 10, 1)
    assert str(e.value) == message


def test_a_decay_key_of_another_schedule_is_not_checked():
    config = _config()
    config.schedule.name = "cosine"
    config.schedule.step_factor = 10.0  # read only by schedule.name="step"
    assert float(optim.create_schedule(config, 10, 1)(0)) == 0.0


def test_train_step_learns_a_fixed_batch():
    graphdef, state, tx, mesh = _tiny_vit_state(3e-3, head_lr_multiplier=1.0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32),
             "label": rng.integers(0, 3, 8).astype(np.int32)}
    step_fn = steps.jit_train_step(graphdef, tx, mesh, num_classes=3)
    losses = []
    for _ in range(15):
        previous = state
        state, metrics = step_fn(state, sharding.to_global(batch, mesh))
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    # Every buffer of the input state (parameters, optimizer state, RNG, step) was donated to
    # the step (updated in place, not copied).
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(previous))
    assert int(state["step"]) == 15
    assert losses[-1] < 0.5 * losses[0]
    assert float(metrics["nonfinite"]) == 0.0


def test_the_logged_gradient_norm_and_accuracy_are_the_steps():
    """`train/grad_norm` and `train/accuracy` (the step's grad_norm_sum and correct): with plain
    SGD at rate 1 the update is minus the gradient, so the norm of the parameters' change is the
    gradient's norm; labels are set so that 12 of the 16 predictions before the step are right."""
    graphdef, state, tx, mesh = _tiny_vit_state(
        1.0, name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip_norm=None)
    rng = np.random.default_rng(3)
    images = rng.normal(size=(16, 16, 16, 3)).astype(np.float32)
    probe = {"image": images, "label": np.zeros(16, np.int32), "mask": np.ones(16, bool)}
    # No dropout in this model: the eval step's logits are the train step's.
    predicted = np.argmax(np.asarray(steps.jit_eval_step(graphdef, mesh, num_classes=3)(
        state, sharding.to_global(probe, mesh))["logits"]), -1).astype(np.int32)
    labels = np.where(np.arange(16) < 12, predicted, (predicted + 1) % 3).astype(np.int32)
    before = jax.tree.map(np.array, state["params"])  # the step donates its input state
    state, metrics = steps.jit_train_step(graphdef, tx, mesh, num_classes=3)(
        state, sharding.to_global({"image": images, "label": labels}, mesh))
    change = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, state["params"], before)
    assert float(metrics["grad_norm_sum"]) > 0.0
    assert float(metrics["grad_norm_sum"]) == pytest.approx(
        float(np.sqrt(sum(np.sum(c**2) for c in jax.tree.leaves(change)))), rel=1e-3)
    assert (float(metrics["correct"]), float(metrics["count"])) == (12.0, 16.0)


@pytest.mark.parametrize(("member", "size"), [
    ("vit", {"variant": "test/8"}), ("manet", {"width": 8}), ("resnet50", {"width": 8})])
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(member, size):
    """model.dtype=bfloat16, through the recipe's config as the trainer builds it: every matmul
    and convolution of the compiled step (forward and backward) runs in bfloat16 but the
    classifier heads' (float32, as big_vision's), while the
    parameters, the optimizer state, the BatchNorm statistics and the loss stay float32 (a step
    that ignored model.dtype trained in float32 and passed a check of the parameters alone)."""
    config = load_config(f"configs/{member}.py")
    config.model.update(dict(size, dtype="bfloat16"))
    config.input.image_size = 32
    model = train_state.create_model(config, num_classes=3, seed=0)
    _, params, _ = train_state.split_model(model)
    tx = optim.create_optimizer(config, optax.constant_schedule(1e-3), params,
                                train_state.head_names(model))
    graphdef, state = train_state.create_train_state(model, tx)
    mesh = sharding.create_mesh()
    state = sharding.replicate(state, mesh)
    batch = sharding.to_global({"image": np.ones((4, 32, 32, 3), np.float32),
                                "label": np.arange(4, dtype=np.int32) % 3}, mesh)
    step_fn = steps.jit_train_step(graphdef, tx, mesh, num_classes=3, label_smoothing=0.1)
    hlo = step_fn.lower(state, batch).as_text()
    # Each matmul's and convolution's operand types: (tensor<...xbf16>, tensor<...xbf16>).
    operands = r"\((tensor<[^>]*>), (tensor<[^>]*>)\)"
    ops = re.findall(rf"stablehlo\.(convolution|dot_general).*: {operands}", hlo)
    bf16 = [op for op in ops if all(t.endswith("xbf16>") for t in op[1:])]
    assert len(bf16) > 10, sorted(set(ops))
    # But the classifier heads (models.HEAD_DTYPE): in bfloat16 their logits were steps of 1/16
    # around 10. Each head's forward matmul and its two gradients', with the 3 classes' axis.
    head = [op for op in ops if op not in bf16]
    assert len(head) == 3 * len(train_state.head_names(model)), sorted(set(ops))
    assert all(kind == "dot_general" and all(t.endswith("xf32>") for t in types)
               and any(t.endswith("x3xf32>") for t in types)
               for kind, *types in head), head
    new_state, metrics = jax.eval_shape(step_fn, state, batch)
    floats = {
        part: {leaf.dtype for leaf in jax.tree.leaves(new_state[part])
               if jnp.issubdtype(leaf.dtype, jnp.floating)}
        for part in ("params", "opt_state", "rest")
    }
    f32 = {jnp.dtype("float32")}
    assert floats["params"] == floats["opt_state"] == f32
    assert floats["rest"] == (set() if member == "vit" else f32)  # BatchNorm statistics
    assert metrics["loss_sum"].dtype == jnp.float32


def test_class_weights_weight_the_training_loss():
    graphdef, state, tx, mesh = _tiny_vit_state(1e-3)
    rng = np.random.default_rng(1)
    batch = {"image": rng.normal(size=(6, 16, 16, 3)).astype(np.float32),
             "label": np.array([0, 0, 0, 1, 1, 2], np.int32), "mask": np.ones(6, bool)}
    # No dropout in this model: the eval step's per-example losses are the train step's.
    per_example = np.asarray(
        steps.jit_eval_step(graphdef, mesh, num_classes=3)(state, sharding.to_global(batch, mesh))[
            "loss"
        ]
    )
    weights = np.array([0.5, 1.0, 3.0], np.float32)
    step_fn = steps.jit_train_step(graphdef, tx, mesh, num_classes=3, class_weights=weights)
    _, metrics = step_fn(state, sharding.to_global({k: batch[k] for k in ("image", "label")},
                                                   mesh))
    w = weights[batch["label"]]
    assert float(metrics["loss_sum"] / metrics["count"]) == pytest.approx(
        float((w * per_example).sum() / w.sum()), rel=1e-5
    )


def test_the_eval_loss_is_the_training_loss_without_label_smoothing():
    """README: `<split>/loss` is the training loss with no smoothing (nor class weights)."""
    graphdef, state, tx, mesh = _tiny_vit_state(1e-3)
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(4, 16, 16, 3)).astype(np.float32),
             "label": np.array([0, 1, 2, 1], np.int32), "mask": np.ones(4, bool)}
    evaluated = steps.jit_eval_step(graphdef, mesh, num_classes=3)(
        state, sharding.to_global(batch, mesh))["loss"]

    def train_loss(smoothing):
        graphdef, state, tx, mesh = _tiny_vit_state(1e-3)  # the step donates its input state
        step_fn = steps.jit_train_step(graphdef, tx, mesh, num_classes=3,
                                       label_smoothing=smoothing)
        inputs = sharding.to_global({k: batch[k] for k in ("image", "label")}, mesh)
        _, metrics = step_fn(state, inputs)
        return float(metrics["loss_sum"] / metrics["count"])

    assert float(np.mean(evaluated)) == pytest.approx(train_loss(0.0), rel=1e-5)
    assert float(np.mean(evaluated)) != pytest.approx(train_loss(0.1), rel=1e-3)


def _ynn_fused_ops(hlo: str) -> set[str]:
    """The HLO opcodes inside the YNNPACK fusions of a compiled program's text."""
    called = set(re.findall(r'calls=%([\w.\-]+).*"kind":"__ynn_fusion"', hlo))
    ops = set()
    for name in called:
        body = re.search(rf"^%{re.escape(name)} .*?^}}", hlo, re.M | re.S).group(0)
        ops |= set(re.findall(r"= \S+ ([\w\-]+)\(", body))
    return ops


def test_cpu_steps_keep_convolutions_out_of_ynnpack(monkeypatch):
    """On CPU the compiled step runs its matmuls in YNNPACK and its convolutions (here the ViT
    patch embedding and its weight gradient) with XLA's own kernels."""
    graphdef, state, tx, mesh = _tiny_vit_state(1e-3)
    batch = sharding.to_global({"image": np.ones((4, 16, 16, 3), np.float32),
                                "label": np.arange(4) % 3}, mesh)
    hlo = steps.jit_train_step(graphdef, tx, mesh, num_classes=3).lower(
        state, batch).compile().as_text()
    assert "dot" in _ynn_fused_ops(hlo)
    assert "convolution" not in _ynn_fused_ops(hlo) and " convolution(" in hlo

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    assert sharding.compiler_options(mesh) is None
