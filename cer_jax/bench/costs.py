r"""Cost figures per model: trainable parameters and XLA-counted FLOPs per image.

    python -m cer_jax.bench.costs [--image_size=224] [--models=vit:B/16,resnet:50,manet]

FLOPs are what XLA's cost analysis counts for the compiled program (a multiply-add is 2 FLOPs,
so ResNet-50's often quoted "4.1 GFLOPs" are multiply-adds, 8.2 GFLOPs here): the eval-mode
forward pass, and one training step as the trainer runs it (`cer_jax.steps.train_step`: forward
in train mode, backward, SGD-momentum update, step metrics), divided by the batch size. XLA
counts only the multiply-adds that touch real pixels, not a convolution's zero padding, so its
figures sit slightly below textbook counts that include the padding.
Models are built abstractly (`nnx.eval_shape`), so nothing is allocated and no weights are
needed; only compilation runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from flax import nnx

from cer_jax import cli, models
from cer_jax.bench import DEFAULT_MODELS
from cer_jax.errors import UserError

# What the part after ':' in a model spec sets, by model name.
SHORTHAND = {"vit": ("variant", str), "resnet": ("depth", int), "manet": ("width", int)}


@dataclasses.dataclass(frozen=True)
class Costs:
    spec: str
    params: int
    forward_flops: float  # per image
    train_step_flops: float  # per image


def parse_model_spec(spec: str, *, image_size: int) -> tuple[str, dict[str, Any]]:
    """'vit:B/16' -> ('vit', {'variant': 'B/16', 'image_size': 224}); 'manet' -> ('manet', {})."""
    name, _, value = spec.partition(":")
    if name not in SHORTHAND:
        raise UserError(f"Unknown model {name!r} in --models {spec!r}: use one of "
                         f"{', '.join(SHORTHAND)}, optionally followed by ':' and its "
                         f"{', '.join(f'{n} {k}' for n, (k, _) in SHORTHAND.items())}.")
    kwargs: dict[str, Any] = {}
    if value:
        key, cast = SHORTHAND[name]
        try:
            kwargs[key] = cast(value)
        except ValueError as e:
            raise UserError(f"--models {spec!r}: {key} must be an integer.") from e
    if name == "vit":
        kwargs["image_size"] = image_size
    return name, kwargs


def compiled_flops(compiled: Any) -> float:
    """FLOPs of a compiled program (`jax.jit(f).lower(...).compile()`) by XLA's cost analysis.

    The one place FLOPs are read: `cer_jax.bench` takes its FLOPs / image (and so FLOP/s and
    MFU) from the very executables it times, through this function.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, Sequence):  # older jax: one dict per device program
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0)) if analysis else 0.0


def xla_flops(fn, *args) -> float:
    """FLOPs of `fn(*args)` as XLA counts them after compiling (args may be abstract)."""
    return compiled_flops(jax.jit(fn).lower(*args).compile())


@functools.cache
def miscounted_flops() -> str | None:
    """None where the default backend's cost analysis counts a bfloat16 matrix product and
    convolution as 2 FLOPs per multiply-add (within 10 %), else what it counted.

    XLA:GPU counted a product it hands to cuBLAS as little more than its output's size
    (jax-ml/jax#22249): FLOPs / image and MFU from such a count would be wrong figures, not low
    ones, so `cer_jax.bench` prints none rather than those."""
    a = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16)
    b = jax.ShapeDtypeStruct((512, 384), jnp.bfloat16)
    x = jax.ShapeDtypeStruct((8, 16, 16, 64), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.bfloat16)

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    checks = (("a 256x512x384 matrix product", jnp.matmul, (a, b), 2 * 256 * 512 * 384),
              ("a 3x3 convolution", conv, (x, w), 2 * 8 * 14 * 14 * 128 * 3 * 3 * 64))
    for what, fn, args, exact in checks:
        try:
            counted = xla_flops(fn, *args)
        except Exception as e:  # noqa: BLE001 (a failed check costs the FLOPs, not the figures)
            return f"no FLOPs or MFU: counting {what} failed on {jax.default_backend()}: {e}"
        if not 0.9 * exact <= counted <= 1.1 * exact:
            return (f"no FLOPs or MFU: XLA's cost analysis on {jax.default_backend()} counts "
                    f"{counted:.4g} FLOPs for {what} of {exact:.4g} (costs_cpu.txt of "
                    "bench/accelerator.sh has the FLOPs as XLA:CPU counts them)")
    return None


def abstract_model(name: str, *, num_classes: int = 7, **model_kwargs: Any) -> nnx.Module:
    """Registry model `name` with abstract arrays: shapes only, nothing allocated."""
    return nnx.eval_shape(lambda: models.create_model(
        name, num_classes=num_classes, rngs=nnx.Rngs(params=0, dropout=1), **model_kwargs))


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def image_batch(batch_size: int, image_size: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)


def forward_flops(model: nnx.Module, *, image_size: int, batch_size: int = 1) -> float:
    """Per-image FLOPs of the eval-mode forward pass."""
    graphdef, state = nnx.split(model)

    def forward(state, images):
        return nnx.merge(graphdef, state)(images, train=False).logits

    return xla_flops(forward, state, image_batch(batch_size, image_size)) / batch_size


def train_step_flops(model: nnx.Module, *, image_size: int, num_classes: int,
                     batch_size: int = 1) -> float:
    """Per-image FLOPs of the trainer's step with SGD momentum (update cost shared by the batch)."""
    from cer_jax import steps
    from cer_jax.train_state import split_model

    graphdef, params, rest = split_model(model)
    tx = optax.sgd(0.01, momentum=0.9)
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "rest": rest,
             "opt_state": jax.eval_shape(tx.init, params)}
    batch = {"image": image_batch(batch_size, image_size),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    step = functools.partial(steps.train_step, graphdef=graphdef, tx=tx, num_classes=num_classes,
                             label_smoothing=0.0, class_weights=None)
    return xla_flops(step, state, batch) / batch_size


def model_costs(name: str, model_kwargs: dict[str, Any] | None = None, *, image_size: int = 224,
                batch_size: int = 1, num_classes: int = 7, spec: str | None = None) -> Costs:
    """Parameters and per-image forward / train-step FLOPs of registry model `name`."""
    model = abstract_model(name, num_classes=num_classes, **(model_kwargs or {}))
    return Costs(
        spec=spec or name,
        params=count_params(model),
        forward_flops=forward_flops(model, image_size=image_size, batch_size=batch_size),
        train_step_flops=train_step_flops(model, image_size=image_size, num_classes=num_classes,
                                          batch_size=batch_size),
    )


TABLE_HEADER = ("| model | trainable parameters | forward GFLOPs / image | "
                "train-step GFLOPs / image | train / forward |\n|---|---:|---:|---:|---:|")


def table_row(c: Costs) -> str:
    return (f"| {c.spec} | {c.params:,} | {c.forward_flops / 1e9:.2f} | "
            f"{c.train_step_flops / 1e9:.2f} | {c.train_step_flops / c.forward_flops:.2f} |")


def table_note(image_size: int) -> str:
    return (f"\n{image_size}x{image_size} RGB input; FLOPs as counted by XLA "
            f"({jax.default_backend()} backend), a multiply-add counting as 2.")


def markdown_table(costs: Sequence[Costs], *, image_size: int) -> str:
    return "\n".join([TABLE_HEADER, *map(table_row, costs), table_note(image_size)])


def define_flags() -> None:
    """The command's flags (defined only when it runs, so `cer_jax.bench` can import this)."""
    flags.DEFINE_integer("image_size", 224, "Side of the square input.", lower_bound=1)
    flags.DEFINE_string("models", DEFAULT_MODELS,
                        "Comma-separated name[:variant|depth|width], e.g. "
                        f"{DEFAULT_MODELS}.")
    flags.DEFINE_integer("batch_size", 1,
                         "Batch the programs are compiled for; figures are per image.",
                         lower_bound=1)
    flags.DEFINE_integer("num_classes", 7, "Classes of the head.", lower_bound=2)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cfg = flags.FLAGS
    specs = [s.strip() for s in cfg.models.split(",") if s.strip()]
    if not specs:  # as cer_jax.bench: an empty table would look like a result
        raise UserError(f"--models is empty: name the models to count, e.g. "
                        f"--models={DEFAULT_MODELS}.")
    # Each row as soon as it is counted (flushed: stdout is often a pipe, e.g. tee): a count
    # stopped by a timeout (bench/accelerator.sh gives it 100 s) keeps the models it finished.
    parsed = [(spec, *parse_model_spec(spec, image_size=cfg.image_size)) for spec in specs]
    print(TABLE_HEADER, flush=True)
    for spec, name, kwargs in parsed:
        print(table_row(model_costs(name, kwargs, image_size=cfg.image_size,
                                    batch_size=cfg.batch_size, num_classes=cfg.num_classes,
                                    spec=spec)), flush=True)
    print(table_note(cfg.image_size))


if __name__ == "__main__":
    define_flags()
    cli.run(main, user_errors=(models.ModelConfigError,))
