"""The cost command's FLOP counts against an analytic count, and its table."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from cer_jax.bench import costs, torch_ref


def conv_flops(out_size: int, kernel: int, in_features: int, out_features: int,
               stride: int = 1) -> int:
    """2 FLOPs per multiply-add of a square conv (padding kernel // 2) with a square output map.

    Like XLA, counts only the taps that fall inside the input: padding contributes nothing.
    """
    pad, in_size = kernel // 2, out_size * stride
    taps = sum(0 <= o * stride - pad + t < in_size for o in range(out_size) for t in range(kernel))
    return 2 * taps * taps * in_features * out_features


def cbam_flops(size: int, c: int) -> int:
    mlp = 2 * 2 * (c * (c // 16) + (c // 16) * c)  # shared MLP on the avg- and max-pooled map
    return mlp + conv_flops(size, 7, 2, 1)


def manet_matmul_flops(s: int, w: int, k: int) -> int:
    """Conv and linear FLOPs of MA-Net (width w) on an s x s image, from the spec's tables."""
    total = conv_flops(s // 2, 7, 3, w, 2)  # stem; max-pool to s/4
    total += 4 * conv_flops(s // 4, 3, w, w)  # layer1
    total += conv_flops(s // 8, 3, w, 2 * w, 2) + 3 * conv_flops(s // 8, 3, 2 * w, 2 * w)  # layer2
    total += conv_flops(s // 8, 1, w, 2 * w, 2)  # its 1x1 shortcut
    q = s // 32  # every patch: 14x14 at 224 -> layer3 (stride 2) -> layer4 (stride 1)
    patch = conv_flops(q, 3, 2 * w, 4 * w, 2) + 3 * conv_flops(q, 3, 4 * w, 4 * w)
    patch += conv_flops(q, 1, 2 * w, 4 * w, 2) + 2 * cbam_flops(q, 4 * w)
    patch += conv_flops(q, 3, 4 * w, 8 * w) + 3 * conv_flops(q, 3, 8 * w, 8 * w)
    patch += conv_flops(q, 1, 4 * w, 8 * w) + 2 * cbam_flops(q, 8 * w)
    total += 4 * patch
    g3, g4 = s // 16, s // 32  # global branch: layer3 and layer4 both stride 2
    total += conv_flops(g3, 3, 2 * w, 4 * w, 2) + conv_flops(g3, 3, 4 * w, 4 * w)
    total += 2 * 8 * conv_flops(g3, 3, w, w) + conv_flops(g3, 1, 2 * w, 4 * w, 2)
    total += conv_flops(g4, 3, 4 * w, 8 * w, 2) + conv_flops(g4, 3, 8 * w, 8 * w)
    total += 2 * 8 * conv_flops(g4, 3, 2 * w, 2 * w) + conv_flops(g4, 1, 4 * w, 8 * w, 2)
    return total + 2 * 2 * 8 * w * k  # fc_1, fc_2


def test_manet_forward_flops_match_the_analytic_count():
    model = costs.abstract_model("manet", num_classes=7, width=16)
    counted = costs.forward_flops(model, image_size=64, batch_size=2)
    analytic = manet_matmul_flops(64, 16, 7)
    # XLA also counts BN, ReLU, pooling and the adds: a few percent on top of the convs.
    assert analytic <= counted <= 1.05 * analytic, (counted, analytic)
    # The same network in the authors' PyTorch code (an independent count).
    reference = torch_ref.MANet(7, width=16)
    assert costs.count_params(model) == sum(p.numel() for p in reference.parameters())


def test_train_step_costs_more_than_twice_the_forward():
    model = costs.abstract_model("resnet", num_classes=7, depth=18, width=8)
    forward = costs.forward_flops(model, image_size=32)
    train = costs.train_step_flops(model, image_size=32, num_classes=7)
    assert train > 2 * forward, (train, forward)


def test_table_and_model_specs():
    name, kwargs = costs.parse_model_spec("vit:B/16", image_size=160)
    assert (name, kwargs) == ("vit", {"variant": "B/16", "image_size": 160})
    assert costs.parse_model_spec("resnet:50", image_size=224) == ("resnet", {"depth": 50})
    assert costs.parse_model_spec("manet", image_size=224) == ("manet", {})
    with pytest.raises(ValueError, match="Unknown model 'mnet' in --models 'mnet'"):
        costs.parse_model_spec("mnet", image_size=224)
    with pytest.raises(ValueError, match="depth must be an integer"):
        costs.parse_model_spec("resnet:fifty", image_size=224)
    table = costs.markdown_table(
        [costs.Costs("manet", 50_547_214, 2.0e9, 6.5e9)], image_size=224)
    assert "| manet | 50,547,214 | 2.00 | 6.50 | 3.25 |" in table.splitlines()


def test_costs_command_uses_absl_flags():
    proc = subprocess.run(
        [sys.executable, "-m", "cer_jax.bench.costs", "--models=vit:test/8", "--image_size=16"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| vit:test/8 |" in proc.stdout


# The costs command, stopped by SIGTERM (what `timeout` sends) as it starts on ResNet.
RUN_COSTS_STOPPED_AT_RESNET = """
import os, runpy, signal, sys
from cer_jax import models

create = models.create_model

def stop_at_resnet(name, **kwargs):
    if name == "resnet":
        os.kill(os.getpid(), signal.SIGTERM)
    return create(name, **kwargs)

models.create_model = stop_at_resnet
sys.argv = ["cer_jax.bench.costs", *sys.argv[1:]]
runpy.run_module("cer_jax.bench.costs", run_name="__main__", alter_sys=True)
"""


def test_a_count_stopped_by_its_timeout_keeps_the_models_it_finished():
    """bench/accelerator.sh gives the XLA:CPU count 100 s (`timeout 100 ... | tee`); the table
    was printed only after the last model, so a count stopped in MA-Net left costs_cpu.txt
    empty, the finished ViT-B/16 and ResNet-50 rows with it."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN_COSTS_STOPPED_AT_RESNET, "--models=vit:test/8,resnet:18",
         "--image_size=16"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| vit:test/8 | "), proc.stdout
    assert lines[:2] == costs.TABLE_HEADER.splitlines()
