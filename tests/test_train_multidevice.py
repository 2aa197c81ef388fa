"""The same steps on 1 and on 4 (simulated CPU) devices give the same losses and state.

Each device count needs its own process: XLA_FLAGS must be set before JAX starts. The model is a
tiny ResNet, so BatchNorm is in play: its statistics only match if they are computed over the
global batch (per-device statistics would give different variances).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json, sys
import jax, numpy as np, optax
from cer_jax import optim, sharding, steps, train_state
from cer_jax.config_loading import load_config

config = load_config("configs/resnet50.py:smoke")
config.model.width = 4
# SGD: Adam normalises near-zero gradients, which turns float reduction-order noise into O(lr)
# differences; SGD keeps them at float-noise size, so the comparison tests the sharding only.
config.optimizer.name, config.optimizer.momentum = "sgd", 0.9
config.optimizer.grad_clip_norm = 1.0
model = train_state.create_model(config, num_classes=5, seed=0)
_, params, _ = train_state.split_model(model)
tx = optim.create_optimizer(config, optax.constant_schedule(0.05), params, ("head",))
graphdef, state = train_state.create_train_state(model, tx)
mesh = sharding.create_mesh()
state = sharding.replicate(state, mesh)
step = steps.jit_train_step(graphdef, tx, mesh, num_classes=5, label_smoothing=0.1)
rng = np.random.default_rng(0)
losses = []
for _ in range(4):
    batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int32)}
    state, metrics = step(state, sharding.to_global(batch, mesh))
    losses.append(float(metrics["loss_sum"] / metrics["count"]))
print(json.dumps({
    "devices": jax.device_count(),
    "losses": losses,
    "head": np.asarray(state["params"]["head"]["kernel"]).ravel().tolist(),
    "bn_var": np.asarray(state["rest"]["bn1"]["var"]).ravel().tolist(),
    "bn_mean": np.asarray(state["rest"]["layer4"][0]["bn1"]["mean"]).ravel().tolist(),
}))
"""


def _run(num_devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=pathlib.Path(__file__).parents[1], env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_one_and_four_devices_agree():
    one, four = _run(1), _run(4)
    assert (one["devices"], four["devices"]) == (1, 4)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    assert one["losses"][-1] != one["losses"][0]
    for key in ("head", "bn_var", "bn_mean"):
        np.testing.assert_allclose(four[key], one[key], rtol=1e-4, atol=1e-6)
