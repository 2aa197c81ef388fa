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

from cer_jax import config_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = config_base.get_base_config()
    config.member = "resnet50"
    config.model = ml_collections.ConfigDict(
        dict(name="resnet", depth=50, width=64, dtype="float32")
    )
    config.input.normalization = "imagenet"
    config_base.follow_up_augmentations(config)

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
        config_base.smoke(config)
        config_base.no_heavy_augmentations(config)
        config.model.depth = 18
        config.model.width = 16
        config.training.num_steps = 300  # ~2x MA-Net's speed; 150 steps leave it near chance
    elif arg:
        raise ValueError(
            f"Unknown config argument {arg!r} for configs/resnet50.py: use '' or 'smoke'."
        )
    return config
