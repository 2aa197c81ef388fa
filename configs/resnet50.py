r"""ResNet50 on RAF-DB compound: fine-tuning recipe from ImageNet weights.

    python -m cer_jax.train --config=configs/resnet50.py --workdir=runs/resnet50 \
        --config.init.checkpoint=/path/to/resnet50.safetensors   # full run (bring the weights)
    python -m cer_jax.train --config=configs/resnet50.py:smoke --workdir=/tmp/r50_smoke
    python -m cer_jax.train --config=configs/resnet50.py:follow_up ...   # the follow-up paper's

Recipe (this project's, torchvision-style fine-tuning): SGD 0.01 momentum 0.9 (Nesterov),
weight decay 1e-4 on kernels only, 1 epoch of linear warm-up then cosine, label smoothing 0.1,
head learning rate x10, 30 epochs at batch 96 (the follow-up's batch). Inputs normalised
with ImageNet mean/std as in pre-training. Augmentations from the follow-up recipe (arXiv
2407.12257): resize 256 + random crop 224, flip, colour jitter (0.5, 0.5, 0.5, 0.1), random
affine and Gaussian blur.

`:follow_up` is the follow-up paper's recipe as stated (config_base.follow_up_recipe): Adam,
3e-6 backbone / 1e-5 head, x0.9 per epoch, 50 epochs; no weight decay, warm-up, clipping or
label smoothing.
"""

from __future__ import annotations

import ml_collections

from cer_jax import config_base
from cer_jax.errors import ConfigArgumentError


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
    elif arg == "follow_up":
        config_base.follow_up_recipe(config)
    elif arg:
        raise ConfigArgumentError("configs/resnet50.py", arg, ("", "smoke", "follow_up"))
    return config
