r"""MA-Net on RAF-DB compound with the authors' recipe (Zhao, Liu, Wang, IEEE TIP 2021).

    python -m cer_jax.train --config=configs/manet.py --workdir=runs/manet \
        --config.init.checkpoint=/path/to/MS-Celeb-1M_pretrained.pth.tar   # bring the weights
    python -m cer_jax.train --config=configs/manet.py:smoke --workdir=/tmp/manet_smoke

Recipe (authors'): SGD lr 0.01, momentum 0.9, weight decay 1e-4 (on every parameter, as
PyTorch's SGD), x0.1 step decay every 15 epochs, batch 128, 224 px, inputs in [0, 1] without
mean/std, random-resized crop + horizontal flip; evaluation resizes to 224. The loss is
0.6 * CE(local head) + 0.4 * CE(global head). The MS-Celeb weights were published with the
2021 code, whose multi-scale path B runs in the forward order: model.path_b_order="auto" takes
it from init.manet_code_version ("2021" -> "forward", "2023" -> "reverse").
"""

from __future__ import annotations

import ml_collections

from cer_jax import config_base
from cer_jax.errors import ConfigArgumentError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = config_base.get_base_config()
    config.member = "manet"
    # path_b_order "auto": what init.manet_code_version says for an authors' .pth.tar, else
    # "forward" (the published weights' 2021 code).
    config.model = ml_collections.ConfigDict(
        dict(name="manet", path_b_order="auto", width=64, dtype="float32")
    )
    config.input.normalization = "unit"
    config.input.train_resize = "random_resized_crop"
    config.input.eval_resize = "resize"
    config.input.flip = True

    config.optimizer.name = "sgd"
    config.optimizer.lr = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_norms_and_biases = True
    config.schedule.name = "step"
    config.schedule.warmup_epochs = 0.0
    config.schedule.step_every_epochs = 15.0
    config.schedule.step_factor = 0.1
    config.training.label_smoothing = 0.0
    config.training.num_epochs = 100.0
    config.training.global_batch_size = 128

    if arg == "smoke":
        config_base.smoke(config)
        config.model.width = 16
    elif arg:
        raise ConfigArgumentError("configs/manet.py", arg, ("", "smoke"))
    return config
