"""Shared base of every training config (configs/*.py); model configs override their recipe.

It lives in the package so that a config file works wherever cer_jax is installed. Every field
can be overridden on the command line, e.g.
    python -m cer_jax.train --config=configs/vit.py --workdir=/tmp/vit \\
        --config.optimizer.lr=1e-4 --config.training.num_epochs=30
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from cer_jax.data.config import dataset_defaults, input_defaults


def get_base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # The member's name: the demo's --models value, the workdir folder and the fusion report all
    # use it (configs/<member>.py sets it to its own file name).
    config.member = "vit"
    # Initialises the model (and its dropout); also the data order and augmentations unless
    # input.seed is set, so that either can vary alone.
    config.seed = 0

    # model.name picks the registry entry (cer_jax.models); every other key is passed to the
    # model's create() as a keyword (dtype as a string: "float32" or "bfloat16" compute). A key
    # left at None ("auto") takes what the pre-trained file implies (init.checkpoint), or the
    # model's default; see cer_jax.warm_start.resolve_model_settings.
    config.model = ml_collections.ConfigDict({"name": "vit"})

    config.dataset = dataset_defaults()
    config.input = input_defaults()

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"  # "adamw" (decoupled decay) | "adam" | "sgd" (coupled L2)
    config.optimizer.lr = 1e-4  # peak learning rate (after warm-up)
    config.optimizer.b1 = 0.9  # adam / adamw only (b1, b2, eps)
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.momentum = 0.9  # sgd only
    config.optimizer.nesterov = False  # sgd only
    config.optimizer.weight_decay = 0.05
    # False: weight decay on dense and convolution kernels only (not on norm scales, biases, a
    # ViT's class token or position embedding); True: on every parameter.
    config.optimizer.decay_norms_and_biases = False
    config.optimizer.grad_clip_norm = placeholder(float)  # e.g. 1.0; None = no clipping
    # Learning-rate multiplier for the classification head(s): new ones, or kept with
    # init.keep_head (then it still applies; set 1.0 to fine-tune a kept head like the rest).
    config.optimizer.head_lr_multiplier = 1.0

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"  # "cosine" | "step" | "exponential" | "constant"
    config.schedule.warmup_epochs = 1.0
    config.schedule.warmup_steps = placeholder(int)  # overrides warmup_epochs when set
    config.schedule.end_lr_fraction = 0.0  # cosine: final lr = lr * end_lr_fraction
    config.schedule.step_every_epochs = 15.0  # step: multiply by step_factor every N epochs
    config.schedule.step_factor = 0.1
    config.schedule.decay_per_epoch = 0.9  # exponential: lr *= decay_per_epoch each epoch

    config.training = ml_collections.ConfigDict()
    config.training.global_batch_size = 96  # over all devices of all hosts
    # Epochs of dataset.train_split ... (a float field also when a config sets it to None, so
    # --config.training.num_epochs=N can override that)
    config.training.num_epochs = ml_collections.FieldReference(30.0, field_type=float)
    config.training.num_steps = placeholder(int)  # ... or a number of steps (wins when set)
    config.training.label_smoothing = 0.1
    config.training.log_every_steps = 50
    config.training.eval_every_steps = placeholder(int)  # None = once per epoch
    # Stop (with a checkpoint) once this global step is reached, as if preempted: the next
    # run on the same workdir resumes (a workdir already at or past it trains nothing). None,
    # or the run's length or more = run to the end (and export).
    config.training.halt_after_steps = placeholder(int)

    config.eval = ml_collections.ConfigDict()
    config.eval.global_batch_size = 128

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = placeholder(int)  # None = at every evaluation
    config.checkpoint.keep = 2  # latest checkpoints kept in <workdir>/checkpoints
    config.checkpoint.best_split = "validation"  # best/ keeps the step with its best macro F1

    # Initial weights (at most one): a pre-trained file (formats: README, "Bring pre-trained
    # weights"), or another cer_jax workdir whose best checkpoint is loaded with a new head.
    config.init = ml_collections.ConfigDict()
    config.init.checkpoint = placeholder(str)
    config.init.workdir = placeholder(str)
    config.init.keep_head = False  # keep the loaded head when its shape fits
    # MA-Net .pth.tar only: the authors' code version the weights were trained with, which fixes
    # model.path_b_order ("2021": forward, the published MS-Celeb-1M weights; "2023": reverse).
    config.init.manet_code_version = "2021"

    # Splits written to <workdir>/export at the end; None = train_split + eval_splits.
    config.export = ml_collections.ConfigDict()
    config.export.splits = placeholder(tuple)
    return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """CPU-sized run on the built-in synthetic RAF-DB (generated into the cache on first use)."""
    config.dataset.synthetic = True
    config.input.image_size = 64
    config.input.resize_size = 72
    # Aligned faces: keep most of the face, or tiny models learn little in a few hundred steps.
    config.input.crop_scale = (0.85, 1.0)
    config.training.global_batch_size = 32
    config.training.num_epochs = None
    config.training.num_steps = 150
    config.training.label_smoothing = 0.0
    config.training.log_every_steps = 25
    config.training.eval_every_steps = 50
    config.eval.global_batch_size = 64
    # From scratch in 150 steps AdamW beats the fine-tuning recipes' SGD by far (measured:
    # MA-Net 58 % vs 20 % test accuracy on synthetic compound after 300 steps).
    config.optimizer.name = "adamw"
    config.optimizer.lr = 2e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_norms_and_biases = False
    config.optimizer.head_lr_multiplier = 1.0
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 10
    return config


def follow_up_augmentations(config: ml_collections.ConfigDict) -> None:
    """The follow-up paper's training augmentations (arXiv 2407.12257), shared by ViT and
    ResNet50: resize 256 + random crop 224, flip, colour jitter (0.5, 0.5, 0.5, 0.1), random
    affine and Gaussian blur. How often each applies, and the blur's kernel and sigma, are not
    stated: the probabilities below (and input.blur's defaults) are this project's choice."""
    config.input.train_resize = "resize_crop"
    config.input.flip = True
    config.input.color_jitter = (0.5, 0.5, 0.5, 0.1)
    config.input.color_jitter_prob = 0.8
    config.input.affine.prob = 0.5
    config.input.blur.prob = 0.2


# The follow-up paper's optimisation (arXiv 2407.12257): Adam, 3e-6 backbone / 1e-5 head, x0.9
# per epoch.
FOLLOW_UP_LR = 3e-6
FOLLOW_UP_HEAD_LR = 1e-5


def follow_up_recipe(config: ml_collections.ConfigDict) -> None:
    """The follow-up paper's recipe (arXiv 2407.12257) as stated, and nothing it does not state:
    Adam, lr 3e-6 backbone / 1e-5 head, exponential decay 0.9 per epoch, 50 epochs, batch 96,
    ImageNet mean/std, its augmentations. Not stated, so off: weight decay, warm-up, gradient
    clipping and label smoothing."""
    follow_up_augmentations(config)
    config.input.normalization = "imagenet"
    config.optimizer.update(
        name="adam", lr=FOLLOW_UP_LR, head_lr_multiplier=FOLLOW_UP_HEAD_LR / FOLLOW_UP_LR,
        weight_decay=0.0, grad_clip_norm=None,
    )
    config.schedule.update(name="exponential", decay_per_epoch=0.9, warmup_epochs=0.0,
                           warmup_steps=None)
    config.training.update(num_epochs=50.0, global_batch_size=96, label_smoothing=0.0)


def no_heavy_augmentations(config: ml_collections.ConfigDict) -> None:
    """Smoke runs from scratch: tiny models learn little in a few hundred steps under heavy
    augmentation."""
    config.input.color_jitter = None
    config.input.affine.prob = 0.0
    config.input.blur.prob = 0.0
