"""ViT checkpoints -> `cer_jax.models.vit.ViT` state paths.

Three formats, told apart by their key names:
- `.npz` of the original vision_transformer / AugReg releases (`Transformer/encoderblock_{i}/
  MultiHeadDotProductAttention_1`, `Transformer/posembed_input/pos_embedding` with a class-token
  entry) and of big_vision (`MultiHeadDotProductAttention_0`, top-level `pos_embedding` without
  one, or before 2022 `Transformer/pos_embedding` with one; scanned `Transformer/encoderblock/...`
  stacks are split per layer);
- Hugging Face `model.safetensors` of `ViTForImageClassification` / `ViTModel` (`vit.` prefix
  optional, `classifier` head, `pooler` = pre-logits);
- timm `vit_*` safetensors (fused `attn.qkv`).

Position embeddings are resized over the patch grid when the model's image size differs exactly
as big_vision's `vit.resample_posemb` does: the (g, g, D) grid is zoomed to (n, n, D) with
`scipy.ndimage.zoom(grid, (n / g, n / g, 1), order=1)` (linear spline interpolation with the
corner samples aligned and no antialiasing), so a 224 px checkpoint loaded at another size has
the same numbers as in big_vision; the class-token entry is kept aside. A model with
`pool="gap"` has no class token: the checkpoint's `cls` and its position-embedding entry are
dropped and reported (the usual way to fine-tune a gap model from a cls checkpoint), never
silently.

The file format also implies settings that change the computed function without changing any
shape (GELU form, LayerNorm epsilon); `cer_jax.pretrained.implied_settings` says which, and
`load_pretrained` warns when the model disagrees with them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np

from cer_jax.models.vit import VARIANTS
from cer_jax.pretrained import Converted
from cer_jax.pretrained.core import WeightImportError

Format = Literal["npz", "timm", "hf"]
# Leaf renames shared by all formats once the block prefix is known.
_LEAVES = {"weight": "kernel", "kernel": "kernel", "bias": "bias", "scale": "scale"}


def detect_format(keys: Iterable[str]) -> Format:
    """'npz' (big_vision / AugReg), 'timm' or 'hf' (Hugging Face), from tensor names alone."""
    keys = set(keys)
    if any(k.startswith("Transformer/") for k in keys):
        return "npz"
    if "cls_token" in keys or "pos_embed" in keys or any(k.startswith("blocks.") for k in keys):
        return "timm"
    if any("embeddings.patch_embeddings" in k for k in keys):
        return "hf"
    raise WeightImportError(
        "Not a ViT checkpoint this importer knows (expected big_vision / AugReg .npz, "
        "Hugging Face ViT or timm vit_* safetensors); its first keys are: "
        + ", ".join(sorted(keys)[:8])
    )


def convert(checkpoint: dict[str, np.ndarray], model) -> Converted:
    """Renames / re-lays-out `checkpoint` for `model` and fits its position embedding."""
    heads = model.blocks[0].attn.num_heads
    reader = {"npz": _from_npz, "timm": _from_timm, "hf": _from_hf}[detect_format(checkpoint)]
    arrays, origin = reader(checkpoint, heads)
    _check_size(arrays, model)
    if "pos_embedding" not in arrays and "embedding/kernel" in arrays:
        # Else assign lists it missing and says to check model.variant, which is right.
        raise WeightImportError(
            "the checkpoint has no position embedding: its ViT computes a fixed one (big_vision's "
            "posemb='sincos2d'), and cer_jax's ViT learns its own; use a ViT file with a learnt "
            "one, e.g. an AugReg .npz (README, 'Bring pre-trained weights')."
        )
    dropped, resized = fit_tokens(arrays, model)
    unused = sorted({origin[name] for name in dropped})
    return Converted(arrays=arrays, unused=unused, resized=resized)


def _geometry(width: int, depth: int, mlp_dim: int, patch: int) -> tuple[str | None, str]:
    """The variant ('S/16') of a ViT of this size, if cer_jax has one, and its size in words."""
    names = [name for name, size in VARIANTS.items() if size[:3] == (width, depth, mlp_dim)]
    variant = f"{names[0]}/{patch}" if names else None
    words = f"width {width}, depth {depth}, MLP {mlp_dim}, patch {patch}"
    return variant, (f"{variant} ({words})" if variant else words)


def _check_size(arrays: dict[str, np.ndarray], model) -> None:
    """A checkpoint of another ViT size (S/16 or B/32 into the default B/16) is one line naming
    the variant to set, not a list of every tensor whose shape differs."""
    kernel = arrays.get("embedding/kernel")
    fc1 = arrays.get("blocks/0/mlp/fc1/kernel")
    blocks = {int(m.group(1)) for k in arrays if (m := re.match(r"blocks/(\d+)/", k))}
    if kernel is None or fc1 is None or np.ndim(kernel) != 4 or np.ndim(fc1) != 2:
        return  # an incomplete file: assign names what is missing
    found = (int(kernel.shape[-1]), len(blocks), int(fc1.shape[1]), int(kernel.shape[0]))
    wanted = (model.embedding.out_features, len(model.blocks),
              model.blocks[0].mlp.fc1.out_features, model.patch_size)
    variant, described = _geometry(*found)
    if found == wanted or variant is None:
        return  # of no size cer_jax builds: assign lists the tensors that differ
    raise WeightImportError(
        f"the checkpoint holds a ViT {described}, and config.model.variant={model.variant!r} "
        f"builds {_geometry(*wanted)[1]}: set --config.model.variant={variant}."
    )


# ---------------------------------------------------------------------------------------------
# Formats.


def _split_heads(kernel: np.ndarray, heads: int) -> np.ndarray:
    """(in, out) -> (in, heads, out // heads); left as is when it cannot fit (assign reports)."""
    if kernel.ndim == 2 and kernel.shape[1] % heads == 0:
        return kernel.reshape(kernel.shape[0], heads, -1)
    return kernel


def _split_bias(bias: np.ndarray, heads: int) -> np.ndarray:
    return bias.reshape(heads, -1) if bias.ndim == 1 and bias.shape[0] % heads == 0 else bias


def _merge_heads_in(kernel: np.ndarray, heads: int) -> np.ndarray:
    """Output projection (in, out) -> (heads, in // heads, out)."""
    if kernel.ndim == 2 and kernel.shape[0] % heads == 0:
        return kernel.reshape(heads, -1, kernel.shape[1])
    return kernel


def _attention(prefix: str, name: str, leaf: str, value: np.ndarray, heads: int):
    """Torch-layout q/k/v/out Linear tensors -> NNX MultiHeadAttention layout."""
    if leaf == "weight":
        value = value.T  # torch Linear (out, in) -> (in, out)
    if name == "out":
        value = _merge_heads_in(value, heads) if leaf == "weight" else value
    else:
        value = _split_heads(value, heads) if leaf == "weight" else _split_bias(value, heads)
    return f"{prefix}/attn/{name}/{_LEAVES[leaf]}", value


# (regex over a checkpoint key, fn(match, tensor) -> (state path, array) or a dict of them)
Rule = tuple[
    str, Callable[[re.Match[str], np.ndarray], tuple[str, np.ndarray] | dict[str, np.ndarray]]
]


def _convert_keys(
    checkpoint: dict[str, np.ndarray],
    rules: list[Rule],
    fmt: str,
    normalise: Callable[[str], str] = lambda key: key,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Applies the first (regex, fn(match, value)) rule matching each normalised key. A rule
    returns one (name, array) pair or a dict of them. Returns the arrays and, for each, the
    file's key it came from. Keys no rule knows are an error: silently skipping them could hide
    a different architecture."""
    arrays: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in checkpoint.items():
        for pattern, fn in rules:
            match = re.fullmatch(pattern, normalise(key))
            if match:
                out = fn(match, value)
                out = out if isinstance(out, dict) else dict([out])
                arrays.update(out)
                origin.update(dict.fromkeys(out, key))
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightImportError(
            f"{fmt} ViT checkpoint has tensors this importer does not understand (a different "
            "architecture?): " + ", ".join(sorted(unknown)[:20])
        )
    return arrays, origin


def _linear(name: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Torch Linear (out, in) -> (in, out)."""
    return f"{name}/{_LEAVES[leaf]}", value.T if leaf == "weight" else value


def _norm(name: str, leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    return f"{name}/{'scale' if leaf == 'weight' else 'bias'}", value


def _patch_embedding(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Torch conv O,I,H,W -> H,W,I,O."""
    return f"embedding/{_LEAVES[leaf]}", value.transpose(2, 3, 1, 0) if leaf == "weight" else value


# transformers >= 5 renames ViT modules in memory (saving restores the Hub names); a state dict
# saved by hand has the new names, mapped back here.
_HF_V5_NAMES = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
]


def _hf_name(key: str) -> str:
    key = key.removeprefix("vit.")
    for pattern, repl in _HF_V5_NAMES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    return key


def _from_hf(checkpoint, heads):
    block = r"encoder\.layer\.(\d+)\."
    norms = {"before": "norm1", "after": "norm2"}
    rules: list[Rule] = [
        (r"embeddings\.cls_token", lambda m, v: ("cls", v)),
        (r"embeddings\.position_embeddings", lambda m, v: ("pos_embedding", v)),
        (r"embeddings\.patch_embeddings\.projection\.(weight|bias)",
         lambda m, v: _patch_embedding(m.group(1), v)),
        (block + r"attention\.attention\.(query|key|value)\.(weight|bias)",
         lambda m, v: _attention(f"blocks/{m.group(1)}", m.group(2), m.group(3), v, heads)),
        (block + r"attention\.output\.dense\.(weight|bias)",
         lambda m, v: _attention(f"blocks/{m.group(1)}", "out", m.group(2), v, heads)),
        (block + r"intermediate\.dense\.(weight|bias)",
         lambda m, v: _linear(f"blocks/{m.group(1)}/mlp/fc1", m.group(2), v)),
        (block + r"output\.dense\.(weight|bias)",
         lambda m, v: _linear(f"blocks/{m.group(1)}/mlp/fc2", m.group(2), v)),
        (block + r"layernorm_(before|after)\.(weight|bias)",
         lambda m, v: _norm(f"blocks/{m.group(1)}/{norms[m.group(2)]}", m.group(3), v)),
        (r"layernorm\.(weight|bias)", lambda m, v: _norm("encoder_norm", m.group(1), v)),
        (r"pooler\.dense\.(weight|bias)", lambda m, v: _linear("pre_logits", m.group(1), v)),
        (r"classifier\.(weight|bias)", lambda m, v: _linear("head", m.group(1), v)),
    ]
    return _convert_keys(checkpoint, rules, "Hugging Face", normalise=_hf_name)


def _from_timm(checkpoint, heads):
    def qkv(m, v):
        if v.shape[0] % 3:
            raise WeightImportError(
                f"timm tensor blocks.{m.group(1)}.attn.qkv.{m.group(2)} has shape {v.shape}; its "
                "first axis should stack q, k and v (a multiple of 3)."
            )
        parts = zip(("query", "key", "value"), np.split(v, 3, axis=0), strict=True)
        return dict(_attention(f"blocks/{m.group(1)}", n, m.group(2), p, heads) for n, p in parts)

    variant = sorted({k.split(".")[0] for k in checkpoint} & {"fc_norm", "norm_pre"})
    if variant:
        raise WeightImportError(
            f"timm ViT checkpoint with {' and '.join(variant)}: timm's average-pool (fc_norm) "
            "and CLIP (norm_pre) ViT variants are not supported; use an AugReg file, e.g. "
            "timm's vit_base_patch16_224.augreg2_in21k_ft_in1k model.safetensors or the AugReg "
            ".npz (README, 'Bring pre-trained weights')."
        )
    rules: list[Rule] = [
        (r"cls_token", lambda m, v: ("cls", v)),
        (r"pos_embed", lambda m, v: ("pos_embedding", v)),
        (r"patch_embed\.proj\.(weight|bias)", lambda m, v: _patch_embedding(m.group(1), v)),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", qkv),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)",
         lambda m, v: _attention(f"blocks/{m.group(1)}", "out", m.group(2), v, heads)),
        (r"blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)",
         lambda m, v: _norm(f"blocks/{m.group(1)}/{m.group(2)}", m.group(3), v)),
        (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)",
         lambda m, v: _linear(f"blocks/{m.group(1)}/mlp/{m.group(2)}", m.group(3), v)),
        (r"norm\.(weight|bias)", lambda m, v: _norm("encoder_norm", m.group(1), v)),
        (r"pre_logits\.fc\.(weight|bias)", lambda m, v: _linear("pre_logits", m.group(1), v)),
        (r"head\.(weight|bias)", lambda m, v: _linear("head", m.group(1), v)),
    ]
    return _convert_keys(checkpoint, rules, "timm")


def _from_npz(checkpoint, heads):
    del heads  # .npz attention kernels already have the (in, heads, head_dim) layout.
    checkpoint = _unstack_scanned(checkpoint)
    renames = {
        "LayerNorm_0": "norm1",
        "MultiHeadDotProductAttention_1": "attn",  # vision_transformer / AugReg
        "MultiHeadDotProductAttention_0": "attn",  # big_vision
        "LayerNorm_2": "norm2",  # vision_transformer / AugReg
        "LayerNorm_1": "norm2",  # big_vision
        "MlpBlock_3": "mlp",
        "MlpBlock_0": "mlp",
        "Dense_0": "fc1",
        "Dense_1": "fc2",
    }

    def in_block(m, v):
        parts = [renames.get(p, p) for p in m.group(2).split("/")]
        return f"blocks/{m.group(1)}/" + "/".join(parts), v

    rules: list[Rule] = [
        (r"cls", lambda m, v: ("cls", v)),
        # vision_transformer's place, big_vision's before 2022 (its fix_old_checkpoints moves
        # both), big_vision's now.
        (r"(?:Transformer/(?:posembed_input/)?)?pos_embedding",
         lambda m, v: ("pos_embedding", v)),
        (r"embedding/(kernel|bias)", lambda m, v: (f"embedding/{m.group(1)}", v)),
        (r"Transformer/encoderblock_(\d+)/((?:LayerNorm_[012]|MultiHeadDotProductAttention_[01]/"
         r"(?:query|key|value|out)|MlpBlock_[03]/Dense_[01])/(?:kernel|bias|scale))", in_block),
        (r"Transformer/encoder_norm/(scale|bias)", lambda m, v: (f"encoder_norm/{m.group(1)}", v)),
        (r"(pre_logits|head)/(kernel|bias)", lambda m, v: (f"{m.group(1)}/{m.group(2)}", v)),
    ]
    return _convert_keys(checkpoint, rules, ".npz")


def _unstack_scanned(checkpoint: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision with scan=True stores `Transformer/encoderblock/...` with a leading layer axis."""
    out = {}
    for key, value in checkpoint.items():
        if key.startswith("Transformer/encoderblock/"):
            rest = key.removeprefix("Transformer/encoderblock/")
            for i, layer in enumerate(value):
                out[f"Transformer/encoderblock_{i}/{rest}"] = layer
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Class token and position embedding.


def fit_tokens(arrays: dict[str, np.ndarray], model) -> tuple[list[str], list[str]]:
    """Makes `cls` / `pos_embedding` fit the model's pooling and patch grid, in place.

    Pre-logits in the checkpoint but not in the model are dropped (as vision_transformer does
    when fine-tuning without a representation layer). Returns (dropped names, resize notes).
    """
    dropped: list[str] = []
    resized: list[str] = []
    if model.pre_logits is None:
        dropped += [k for k in arrays if k.startswith("pre_logits/")]
    if model.pool == "gap" and "cls" in arrays:
        dropped.append("cls")
    if model.pool == "cls" and "cls" not in arrays and "pos_embedding" in arrays:
        # big_vision's GAP ViTs (pool_type="gap") have no class token to read the output from.
        raise WeightImportError(
            "the checkpoint has no class token (cls): it was trained with global average "
            "pooling; set --config.model.pool=gap."
        )
    for name in dropped:
        del arrays[name]
    posemb = np.asarray(arrays.get("pos_embedding"))
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        return dropped, resized  # missing or of the wrong rank: assign reports it
    original_shape = posemb.shape
    num_tokens = posemb.shape[1]
    if _is_square(num_tokens - 1) and num_tokens > 1:
        cls_entry, grid = posemb[:, :1], posemb[:, 1:]
    elif _is_square(num_tokens):
        cls_entry, grid = None, posemb  # big_vision: the class token has no position entry
    else:
        raise WeightImportError(
            f"pos_embedding in the checkpoint has {num_tokens} tokens, which is neither a square "
            "patch grid nor one plus a square; cannot tell its layout."
        )
    side = model.image_size // model.patch_size
    notes = []
    if grid.shape[1] != side * side:
        old = math.isqrt(grid.shape[1])
        grid = resize_posemb_grid(grid, side)
        notes.append(f"grid {old}x{old} -> {side}x{side} (order-1 zoom, as big_vision)")
    if model.pool == "cls":
        if cls_entry is None:
            cls_entry = np.zeros_like(grid[:, :1])
            notes.append("zero class-token entry added (big_vision layout)")
        posemb = np.concatenate([cls_entry, grid], axis=1)
    else:
        if cls_entry is not None:
            notes.append("class-token entry dropped (pool='gap')")
        posemb = grid
    arrays["pos_embedding"] = posemb
    if notes:
        resized.append(f"pos_embedding {original_shape} -> {posemb.shape}: " + ", ".join(notes))
    return dropped, resized


def _is_square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def resize_posemb_grid(grid: np.ndarray, side: int) -> np.ndarray:
    """(1, g*g, D) -> (1, side*side, D) as big_vision's `resample_posemb`:
    `scipy.ndimage.zoom` of the (g, g, D) grid by (side / g, side / g, 1) with `order=1`."""
    import scipy.ndimage

    old = math.isqrt(grid.shape[1])
    image = np.asarray(grid).reshape(old, old, grid.shape[-1])
    out = scipy.ndimage.zoom(image, (side / old, side / old, 1), order=1)
    return out.astype(grid.dtype).reshape(1, side * side, grid.shape[-1])
