"""The PyTorch reference a user would otherwise pick, timed like the JAX side.

ViT and ResNet are Hugging Face `transformers` models (`ViTForImageClassification`,
`ResNetForImageClassification`) configured to our variants with random weights (nothing is
downloaded); MA-Net is the authors' architecture (github.com/zengqunzhao/MA-Net,
model/manet.py) written out below, the same network as the reference in tests/test_manet.py.
Same batch, input size and precision (bfloat16: `torch.autocast`, parameters in float32, as
the JAX models compute in bfloat16 with float32 parameters), same optimizer and loss as the
model's recipe, eager mode, PyTorch's default threads. On CUDA it runs as a PyTorch training
script would: cuDNN autotuning on (`cudnn.benchmark`, as timm's train.py sets it; the warm-up
steps absorb the search) and float32 matmuls on TF32 tensor cores, the precision JAX's default
gives float32 dots on these GPUs. The train step is
zero_grad -> forward -> loss -> backward -> (clip) -> optimizer step; eval is a forward pass
under `torch.inference_mode`. The steps are timed by `throughput.bench_model`, interleaved with
the JAX steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from cer_jax.bench.throughput import Setup

# --------------------------------------------------------------------------------------------
# MA-Net (authors' code, with a width knob and both path-B orders).


def _conv3x3(i, o, stride=1):
    return nn.Conv2d(i, o, 3, stride, 1, bias=False)


def _downsample(i, o, stride):
    if stride == 1 and i == o:
        return None
    return nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))


class BasicBlock(nn.Module):
    def __init__(self, i, o, stride=1):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(i, o, stride), nn.BatchNorm2d(o)
        self.conv2, self.bn2 = _conv3x3(o, o), nn.BatchNorm2d(o)
        self.downsample = _downsample(i, o, stride)

    def body(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.body(x) + identity)


class ChannelGate(nn.Module):
    def __init__(self, c, r=16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(c, c // r), nn.ReLU(),
                                 nn.Linear(c // r, c))

    def forward(self, x):
        avg = self.mlp(nn.functional.avg_pool2d(x, x.shape[2:]))
        mx = self.mlp(nn.functional.max_pool2d(x, x.shape[2:]))
        return x * torch.sigmoid(avg + mx)[:, :, None, None]


class BasicConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, 1, 3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True)

    def forward(self, x):
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = BasicConv()

    def forward(self, x):
        pooled = torch.cat([x.max(1, keepdim=True)[0], x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ChannelGate, self.SpatialGate = ChannelGate(c), SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


class AttentionBlock(BasicBlock):
    def __init__(self, i, o, stride=1):
        super().__init__(i, o, stride)
        self.cbam = CBAM(o)

    def body(self, x):
        return self.cbam(super().body(x))


class MulScaleBlock(nn.Module):
    def __init__(self, i, o, stride=1, reverse=True):
        super().__init__()
        w = o // 4
        self.reverse = reverse
        self.conv1, self.bn1 = _conv3x3(i, o, stride), nn.BatchNorm2d(o)
        for p in (1, 2):
            for k in (1, 2, 3, 4):
                setattr(self, f"conv{p}_2_{k}", _conv3x3(w, w))
                setattr(self, f"bn{p}_2_{k}", nn.BatchNorm2d(w))
        self.downsample = _downsample(i, o, stride)

    def forward(self, x):
        r = torch.relu
        s = torch.split(r(self.bn1(self.conv1(x))), self.conv1.out_channels // 4, 1)
        a1 = self.bn1_2_1(self.conv1_2_1(s[0]))
        a2 = self.bn1_2_2(self.conv1_2_2(r(a1) + s[1]))
        a3 = self.bn1_2_3(self.conv1_2_3(r(a2) + s[2]))
        a4 = self.bn1_2_4(self.conv1_2_4(r(a3) + s[3]))
        if self.reverse:
            b4 = self.bn2_2_4(self.conv2_2_4(s[3]))
            b3 = self.bn2_2_3(self.conv2_2_3(r(b4) + s[2]))
            b2 = self.bn2_2_2(self.conv2_2_2(r(b3) + s[1]))
            b1 = self.bn2_2_1(self.conv2_2_1(r(b2) + s[0]))
        else:
            b1 = self.bn2_2_1(self.conv2_2_1(s[0]))
            b2 = self.bn2_2_2(self.conv2_2_2(r(b1) + s[1]))
            b3 = self.bn2_2_3(self.conv2_2_3(r(b2) + s[2]))
            b4 = self.bn2_2_4(self.conv2_2_4(r(b3) + s[3]))
        out = torch.cat([a1, a2, a3, a4], 1) + torch.cat([b1, b2, b3, b4], 1)
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class MANet(nn.Module):
    """Returns (local logits, global logits); the prediction is 0.6 local + 0.4 global."""

    def __init__(self, num_classes, width=64, reverse=True):
        super().__init__()
        w = width

        def layer(block, i, o, stride, **kw):
            return nn.Sequential(block(i, o, stride, **kw), block(o, o, 1, **kw))

        self.conv1, self.bn1 = nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = layer(BasicBlock, w, w, 1)
        self.layer2 = layer(BasicBlock, w, 2 * w, 2)
        for p in (1, 2, 3, 4):
            setattr(self, f"layer3_1_p{p}", layer(AttentionBlock, 2 * w, 4 * w, 2))
            setattr(self, f"layer4_1_p{p}", layer(AttentionBlock, 4 * w, 8 * w, 1))
        self.layer3_2 = layer(MulScaleBlock, 2 * w, 4 * w, 2, reverse=reverse)
        self.layer4_2 = layer(MulScaleBlock, 4 * w, 8 * w, 2, reverse=reverse)
        self.fc_1, self.fc_2 = nn.Linear(8 * w, num_classes), nn.Linear(8 * w, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        h, w = x.shape[2] // 2, x.shape[3] // 2
        patches = [x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:]]
        outs = [getattr(self, f"layer4_1_p{p}")(getattr(self, f"layer3_1_p{p}")(patch))
                for p, patch in enumerate(patches, start=1)]
        local = torch.cat([torch.cat(outs[:2], 3), torch.cat(outs[2:], 3)], 2).mean((2, 3))
        glob = self.layer4_2(self.layer3_2(x)).mean((2, 3))
        return self.fc_1(local), self.fc_2(glob)


# --------------------------------------------------------------------------------------------
# Hugging Face models matching our variants.

RESNET_DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
                 50: ("bottleneck", [3, 4, 6, 3]), 101: ("bottleneck", [3, 4, 23, 3]),
                 152: ("bottleneck", [3, 8, 36, 3])}


def hf_vit(model_cfg, image_size: int, num_classes: int) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    from cer_jax.models import vit

    name, patch = vit.parse_variant(model_cfg.get("variant", "B/16"))
    width, depth, mlp_dim, heads = vit.VARIANTS[name]
    if model_cfg.get("pool", "cls") != "cls" or model_cfg.get("representation_size"):
        raise ValueError("the Hugging Face ViT reference has a class token and no pre-logits")
    config = ViTConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=mlp_dim, hidden_act="gelu", image_size=image_size, patch_size=patch,
        num_channels=3, qkv_bias=True, layer_norm_eps=model_cfg.get("layer_norm_eps", 1e-6),
        hidden_dropout_prob=model_cfg.get("dropout", 0.0),
        attention_probs_dropout_prob=model_cfg.get("attention_dropout", 0.0),
        num_labels=num_classes,
    )
    return ViTForImageClassification(config)


def hf_resnet(model_cfg, num_classes: int) -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    depth, width = int(model_cfg.get("depth", 50)), int(model_cfg.get("width", 64))
    layer_type, depths = RESNET_DEPTHS[depth]
    expansion = 4 if layer_type == "bottleneck" else 1
    config = ResNetConfig(
        embedding_size=width, hidden_sizes=[width * 2**i * expansion for i in range(4)],
        depths=depths, layer_type=layer_type, hidden_act="relu",
        downsample_in_first_stage=False, downsample_in_bottleneck=False,
        num_labels=num_classes,
    )
    return ResNetForImageClassification(config)


def torch_model(setup: Setup) -> nn.Module:
    cfg = setup.config.model
    if setup.name == "vit":
        return hf_vit(cfg, setup.image_size, setup.num_classes)
    if setup.name == "resnet":
        return hf_resnet(cfg, setup.num_classes)
    if setup.name == "manet":
        return MANet(setup.num_classes, width=int(cfg.get("width", 64)),
                     reverse=cfg.get("path_b_order", "forward") == "reverse")
    raise ValueError(f"no PyTorch reference for model {setup.name!r}")


def head_logits(setup: Setup, out) -> list[tuple[torch.Tensor, float]]:
    if setup.name == "manet":
        local, glob = out
        return [(local, 0.6), (glob, 0.4)]
    return [(out.logits, 1.0)]


def torch_optimizer(config, params) -> torch.optim.Optimizer:
    """The recipe's optimizer (config.optimizer), as PyTorch users would write it."""
    opt = config.optimizer
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps,
                                 weight_decay=opt.weight_decay, foreach=True)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps,
                                weight_decay=opt.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum or 0.0,
                           nesterov=bool(opt.nesterov), weight_decay=opt.weight_decay,
                           foreach=True)


@dataclasses.dataclass
class ReferenceSteps:
    """One blocking train step and one blocking eval step of the PyTorch reference."""

    train_step: Callable[[], None]
    eval_step: Callable[[], None]
    framework: str
    params: int
    model: nn.Module | None = None


def memory_format(setup: Setup) -> torch.memory_format:
    """channels_last for the convolutional networks, as PyTorch's performance guide advises for
    them (oneDNN on CPU, cuDNN's tensor cores under autocast): in the default NCHW their
    PyTorch steps ran 5-24 % slower on the development CPU, which flattered our ratios."""
    return torch.contiguous_format if setup.name == "vit" else torch.channels_last


def reference_steps(setup: Setup, *, seed: int = 0) -> ReferenceSteps:
    """The PyTorch reference's steps (CPU, or CUDA when available) on a fixed random batch."""
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    layout = memory_format(setup)
    model = torch_model(setup).to(device, memory_format=layout)
    b, s = setup.batch_size, setup.image_size
    images = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, setup.num_classes, (b,), device=device)
    bf16 = setup.precision == "bfloat16"
    optimizer = torch_optimizer(setup.config, model.parameters())
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(setup.config.training.label_smoothing))
    clip = setup.config.optimizer.get("grad_clip_norm")

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device, dtype=torch.bfloat16)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(images)
        loss = sum(w * loss_fn(logits.float(), labels) for logits, w in head_logits(setup, out))
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip), foreach=True)
        optimizer.step()
        sync()

    def eval_step():
        model.eval()
        with torch.inference_mode(), autocast():
            out = model(images)
            head_logits(setup, out)[0][0].float().cpu()
        sync()

    return ReferenceSteps(
        train_step=train_step, eval_step=eval_step,
        framework=f"torch {torch.__version__} eager ({device}, {torch.get_num_threads()} "
                  f"threads{', cudnn.benchmark, TF32' if device == 'cuda' else ''}"
                  f"{', channels_last' if layout == torch.channels_last else ''})",
        params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        model=model,
    )


def checked_reference_steps(setup: Setup) -> ReferenceSteps | str:
    """`reference_steps` after one train and one eval step, or the error's first line.

    A PyTorch that cannot run beside JAX (its cuDNN older than the one JAX loaded first, no GPU
    memory left beside JAX's) then costs the comparison of this model, not the benchmark: its
    first step used to end the whole run, the JAX figures of every model with it."""
    try:
        reference = reference_steps(setup)
        reference.train_step()
        reference.eval_step()
    except Exception as e:  # noqa: BLE001 (any PyTorch failure: the JAX figures matter more)
        reference = None
        if torch.cuda.is_available():
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()  # what the failed model held, back for JAX's side
        first_line = (str(e).strip().splitlines() or [""])[0]
        return f"no PyTorch reference for {setup.spec}: {type(e).__name__}: {first_line}"
    return reference
