r"""ResNet50 on RAF-DB compound: fine-tuning recipe from ImageNet weights.

    python -m cer_jax.train --config=configs/resnet50.py --workdir=runs/resnet50 \
        --config.init.checkpoint=/path/to/resnet50.safetensors   # full run (bring the weights)
    python -m cer_jax.train --config=configs/resnet50.py:smoke --workdir=/tmp/r50_smoke

Recipe: SGD momentum 0.9 (Nesterov), weight decay 1e-4 off norms and biases, linear warm-up then
cosine, label smoothing 0.1, head learning rate x10. Inputs normalised with ImageNet mean/std
as in pre-training. Augmentations from the follow-up recipe (paper.md): resize 256 + random crop
224, flip, colour jitter (0.5, 0.5, 0.5, 0.1), random affine and Gaussian blur.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.get_base_config()
    config.model = ml_collections.ConfigDict(
        dict(name="resnet", depth=50, width=64, dtype="float32")
    )
    config.input.normalization = "imagenet"
    config.input.train_resize = "resize_crop"
    config.input.color_jitter = (0.5, 0.5, 0.5, 0.1)
    config.input.color_jitter_prob = 0.8
    config.input.affine.prob = 0.5
    config.input.blur.prob = 0.2

    config.optimizer.name = "sgd"
    config.optimizer.lr = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 1e-4
    config.optimizer.head_lr_multiplier = 10.0
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 1.0
    config.training.num_epochs = 30.0
    config.training.global_batch_size = 96

    if arg == "smoke":
        common.smoke(config)
        config.model.depth = 18
        config.model.width = 16
        config.training.num_steps = 300  # ~2x MA-Net's speed; 150 steps leave it near chance
        config.input.color_jitter = None
        config.input.affine.prob = 0.0
        config.input.blur.prob = 0.0
    elif arg:
        raise ValueError(
            f"Unknown config argument {arg!r} for configs/resnet50.py: use '' or 'smoke'."
        )
    return config
