r"""ViT on RAF-DB compound: fine-tuning recipe from an AugReg / ViT checkpoint.

    python -m cer_jax.train --config=configs/vit.py --workdir=runs/vit \
        --config.init.checkpoint=/path/to/ViT-B_16.npz     # full run (bring the weights)
    python -m cer_jax.train --config=configs/vit.py:smoke --workdir=/tmp/vit_smoke
    python -m cer_jax.train --config=configs/vit.py:follow_up ...   # the follow-up paper's recipe

Recipe (this project's, big_vision-style fine-tuning): AdamW at 3e-5 with weight decay 0.05 on
kernels only, 2 epochs of linear warm-up then cosine, label smoothing 0.1, gradient clipping
at 1.0, stochastic depth 0.1 (at the last block, 0 at the first), head learning rate x10, 30
epochs at batch 96 (the follow-up's batch). Inputs in [-1, 1] as in AugReg pre-training.
Augmentations from the follow-up recipe (arXiv 2407.12257): resize 256 + random
crop 224, flip, colour jitter (0.5, 0.5, 0.5, 0.1), random affine (15 deg, translate 0.1,
scale 0.9-1.1, shear 10) and Gaussian blur.

`:follow_up` is the follow-up paper's recipe as stated (config_base.follow_up_recipe): Adam,
3e-6 backbone / 1e-5 head, x0.9 per epoch, 50 epochs, ImageNet mean/std; no weight decay,
warm-up, clipping, label smoothing, stochastic depth or zero-initialised head. AugReg weights
were pre-trained on [-1, 1] inputs: add --config.input.normalization=minus_one_one to feed them
what they expect.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from cer_jax import config_base
from cer_jax.errors import ConfigArgumentError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = config_base.get_base_config()
    config.member = "vit"
    config.model = ml_collections.ConfigDict(
        dict(
            name="vit",
            variant="B/16",
            image_size=config.input.get_ref("image_size"),
            pool="cls",
            dropout=0.0,
            stochastic_depth=0.1,
            head_zeroinit=True,  # big_vision fine-tuning convention
            dtype="float32",  # "bfloat16" for mixed precision on TPU / GPU
            # None = auto: what init.checkpoint's format implies (AugReg / big_vision .npz:
            # tanh GELU, 1e-6; Hugging Face: its config.json), else the model's default.
            gelu_approximate=placeholder(bool),
            layer_norm_eps=placeholder(float),
        )
    )
    config.input.normalization = "minus_one_one"
    config_base.follow_up_augmentations(config)

    config.optimizer.name = "adamw"
    config.optimizer.lr = 3e-5
    config.optimizer.weight_decay = 0.05
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.head_lr_multiplier = 10.0
    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 2.0
    config.training.num_epochs = 30.0
    config.training.global_batch_size = 96

    if arg == "smoke":
        config_base.smoke(config)
        config_base.no_heavy_augmentations(config)
        # A ViT from scratch learns slowly from few images: smaller and faster (16 tokens at
        # 32 px), so it gets ~7x MA-Net's smoke steps (~3x ResNet's) in similar CPU time.
        config.model.variant = "test/8"
        config.input.image_size = 32
        config.input.resize_size = 36
        config.training.num_steps = 1000
        config.training.log_every_steps = 100
        config.training.eval_every_steps = 250
        config.model.stochastic_depth = 0.0
        # From scratch a zero head blocks the body's gradients for the first ~100 steps.
        config.model.head_zeroinit = False
        config.optimizer.lr = 1e-3
    elif arg == "follow_up":
        config_base.follow_up_recipe(config)
        config.model.stochastic_depth = 0.0
        config.model.head_zeroinit = False  # a big_vision convention, not the recipe's
    elif arg:
        raise ConfigArgumentError("configs/vit.py", arg, ("", "smoke", "follow_up"))
    return config
