"""tf.data input pipeline: decode once, cache, shuffle per epoch, augment, batch, per host.

Training data is dealt into `input.num_data_shards` disjoint shards, class by class (each shard
holds every class in proportion). Every global batch holds B / S examples of each shard, in
shard order; a process reads only its own contiguous block of shards, so the global batch (and
so the whole run) is the same on 1, 2 or S processes: the stream is a pure function of (seed,
S, step), never of the host count. Within shard s, epoch e is a shuffle of the shard's cached
examples seeded by (seed, s, e), and the example at shard position p is augmented with a
stateless seed derived from (seed, s, p). Resuming at step k starts at epoch (k * b) // n,
skips the remaining (k * b) % n cached examples *before* augmentation, and reproduces batches
k, k+1, ... exactly.

Evaluation reads a contiguous slice of the split per process, padded so that every process
yields the same number of batches; the union of the slices is every example once.
`jax.process_count()` and `jax.process_index()` are the only multi-host knowledge here, with
votes (`sharding`) where a read that fails on one host would leave the others waiting in the
next collective.
Batches are host-local numpy.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from cer_jax import sharding
from cer_jax.data import augment
from cer_jax.data.sources import (
    DataConfigError,
    DatasetInfo,
    Source,
    as_written,
    check_split,
    import_tf,
    open_source,
)

__all__ = [
    "DataConfigError",
    "DatasetInfo",
    "class_weights",
    "eval_iterator",
    "get_dataset_info",
    "host_slice",
    "num_data_shards",
    "shard_indices",
    "train_iterator",
    "validate_splits",
]

_FOREVER = 2**62
_TRAIN_RESIZES = ("random_resized_crop", "resize_crop")
_EVAL_RESIZES = ("resize_crop", "resize")
_BALANCES = ("none", "sampling", "loss_weights")
# What a host that met no read error says of one that did (its own line is in its log).
READ_HINT = "it could not read its part of the split: see its log"


def check_input_config(cfg: ml_collections.ConfigDict) -> None:
    """Rejects `input` settings that cannot work, naming the key and the allowed values."""

    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise DataConfigError(f"config.input.{key}={cfg[key]!r}: {msg}")

    need(
        cfg.normalization in augment.NORMALIZATIONS,
        "normalization",
        f"choose one of {', '.join(augment.NORMALIZATIONS)}.",
    )
    need(
        cfg.train_resize in _TRAIN_RESIZES,
        "train_resize",
        f"choose one of {', '.join(_TRAIN_RESIZES)}.",
    )
    need(
        cfg.eval_resize in _EVAL_RESIZES,
        "eval_resize",
        f"choose one of {', '.join(_EVAL_RESIZES)}.",
    )
    need(cfg.balance in _BALANCES, "balance", f"choose one of {', '.join(_BALANCES)}.")
    # None (a ViT's model.image_size is a reference to it, which takes a None override) was
    # int()'s TypeError traceback.
    need(cfg.image_size is not None and int(cfg.image_size) > 0, "image_size",
         "must be a positive number of pixels.")
    # 0 or less silently became a buffer of 1: no shuffling, every epoch in one order.
    need(cfg.shuffle_buffer is None or cfg.shuffle_buffer >= 1, "shuffle_buffer",
         "give a buffer of 1 or more examples (1: no shuffling), or None for the whole data "
         "shard (an exact per-epoch permutation).")
    need(cfg.prefetch is None or cfg.prefetch >= 0, "prefetch",
         "give a number of batches >= 0, or None for tf.data's AUTOTUNE.")
    uses_resize_size = cfg.train_resize == "resize_crop" or cfg.eval_resize == "resize_crop"
    need(
        not uses_resize_size or cfg.resize_size >= cfg.image_size,
        "resize_size",
        f"must be >= config.input.image_size={cfg.image_size} for the resize_crop modes: "
        f"set it with the image size, e.g. --config.input.resize_size="
        f"{round(cfg.image_size * 256 / 224)} (the recipes' 256 for 224).",
    )
    need(
        cfg.color_jitter is None or len(cfg.color_jitter) == 4,
        "color_jitter",
        "give (brightness, contrast, saturation, hue), e.g. (0.5, 0.5, 0.5, 0.1), or None.",
    )
    need(
        cfg.color_jitter is None or (_numbers(cfg.color_jitter)
                                     and all(v >= 0 for v in cfg.color_jitter[:3])
                                     and 0 <= cfg.color_jitter[3] <= 0.5),
        "color_jitter",
        "brightness, contrast and saturation must be >= 0 and hue in [0, 0.5] (torchvision).",
    )
    for key, prob in (("color_jitter_prob", cfg.color_jitter_prob),
                      ("affine.prob", cfg.affine.prob), ("blur.prob", cfg.blur.prob),
                      ("random_erasing.prob", cfg.random_erasing.prob)):
        if not 0 <= prob <= 1:
            raise DataConfigError(f"config.input.{key}={prob!r}: a probability is in [0, 1].")
    # (key, value, upper bound or None, what it is): each a (min, max) range with 0 < min <= max.
    ranges = [("crop_scale", cfg.crop_scale, 1, "fractions of the image area"),
              ("crop_ratio", cfg.crop_ratio, None, "aspect ratios")]
    if cfg.affine.prob > 0:
        a = cfg.affine
        for key, ok, allowed in (("degrees", a.degrees >= 0, "an angle >= 0"),
                                 ("translate", 0 <= a.translate <= 1,
                                  "a fraction of the image side in [0, 1]"),
                                 ("shear", a.shear >= 0, "an angle >= 0")):
            if not ok:
                raise DataConfigError(f"config.input.affine.{key}={a[key]!r}: give {allowed}.")
        ranges.append(("affine.scale", a.scale, None, "zoom factors"))
    if cfg.blur.prob > 0:
        if not (cfg.blur.kernel > 0 and cfg.blur.kernel % 2 == 1):
            raise DataConfigError(f"config.input.blur.kernel={cfg.blur.kernel!r}: the blur "
                                  "kernel size must be odd and positive.")
        ranges.append(("blur.sigma", cfg.blur.sigma, None, "Gaussian standard deviations"))
    if cfg.random_erasing.prob > 0:
        ranges += [("random_erasing.area", cfg.random_erasing.area, 1,
                    "fractions of the image area"),
                   ("random_erasing.ratio", cfg.random_erasing.ratio, None, "aspect ratios")]
    for key, pair, upper, what in ranges:
        pair = tuple(pair)
        if not (len(pair) == 2 and _numbers(pair)
                and 0 < pair[0] <= pair[1] <= (upper or float("inf"))):
            bound = f" <= {upper}" if upper else ""
            raise DataConfigError(f"config.input.{key}={pair!r}: give (min, max) {what} "
                                  f"with 0 < min <= max{bound}.")


def _numbers(values) -> bool:
    """Whether every value is a number: a word in a tuple override (`0.5,1.O`: a letter O) was
    a TypeError traceback from the comparisons."""
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Prepares the data if needed and describes it; checks the configured splits exist."""
    check_input_config(config.input)
    info = open_source(config.dataset).info
    check_split(info, config.dataset.train_split, "config.dataset.train_split")
    for split in config.dataset.eval_splits:
        check_split(info, split, "config.dataset.eval_splits")
    return info


def validate_splits(
    config: ml_collections.ConfigDict, info: DatasetInfo, splits: list[str]
) -> None:
    """Everything a run will read, checked before it costs anything: each split exists and
    decodes, and every class has training examples (unless dataset.allow_empty_classes)."""
    source = open_source(config.dataset)
    for split in splits:
        check_split(info, split, "config.dataset.train_split / eval_splits / export.splits")
        if not info.split_sizes[split]:  # a TFDS dataset's empty split: metrics of nothing
            raise DataConfigError(
                f"Split {split!r} of {info.name} has no examples: drop it from "
                "config.dataset.train_split / eval_splits / export.splits, or rebuild the "
                "dataset with examples in it."
            )
        bad = source.unreadable_files(split)
        if bad:
            raise DataConfigError(
                f"{len(bad)} file(s) of split {split!r} cannot be decoded as images: "
                f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}. Remove or replace them, "
                "then rerun."
            )
    split = config.dataset.train_split
    labels = source.labels(split)
    _check_shards(config, labels, info, split)
    counts = np.bincount(labels, minlength=info.num_classes)
    empty = [name for name, count in zip(info.class_names, counts, strict=True) if count == 0]
    if empty and not config.dataset.get("allow_empty_classes"):
        raise DataConfigError(
            f"Class(es) {', '.join(repr(n) for n in empty)} have no examples in the training "
            f"split {split!r} of {info.name}, so the model could never predict them. Add "
            "training images, remove the class folder(s), or set "
            "--config.dataset.allow_empty_classes=True."
        )


def host_slice(num_examples: int, process_count: int, process_index: int) -> tuple[int, int]:
    """The contiguous [start, end) slice of a split read by one process (sizes differ <= 1)."""
    return (
        process_index * num_examples // process_count,
        (process_index + 1) * num_examples // process_count,
    )


def num_data_shards(config: ml_collections.ConfigDict) -> int:
    """input.num_data_shards; None (the default) means one shard per process."""
    value = config.input.get("num_data_shards")
    return jax.process_count() if value is None else int(value)


def check_data_shards(num_shards: int, global_batch_size: int,
                      recorded_in: str | None = None) -> None:
    """Each process reads whole shards, and each global batch takes B / S from every shard.
    `recorded_in`: the workdir of the resumed run whose count this is (its data order, which
    another count would change, so only another process count can fix it)."""
    count = jax.process_count()
    if recorded_in and num_shards > 0 and num_shards % count:
        fits = [str(n) for n in range(1, num_shards + 1) if num_shards % n == 0]
        on = f"{', '.join(fits[:-1])} or {fits[-1]} processes" if len(fits) > 1 else "1 process"
        raise DataConfigError(
            f"--workdir={recorded_in} holds a run whose training split is dealt into "
            f"config.input.num_data_shards={num_shards} (its config.json), which {count} "
            f"processes cannot share (each reads whole shards): resume it on {on}, or train "
            "anew in another --workdir."
        )
    if num_shards <= 0 or num_shards % count:
        raise DataConfigError(
            f"config.input.num_data_shards={num_shards} must be a positive multiple of the "
            f"{count} processes (each reads whole shards). Set it to a multiple of {count}, or "
            "to None for one shard per process."
        )
    if global_batch_size <= 0 or global_batch_size % num_shards:
        raise DataConfigError(
            f"training.global_batch_size={global_batch_size} must be a positive multiple of "
            f"config.input.num_data_shards={num_shards} (each batch takes the same number of "
            "examples from every shard); change one of them."
        )


def shard_indices(labels: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Deals a split into `num_shards` disjoint shards covering it: the examples, sorted by
    class (stored order within a class), are dealt round robin, so every shard holds each
    class's examples in proportion (per-class counts differ by at most one). Each shard's
    indices are in stored order."""
    order = np.argsort(np.asarray(labels), kind="stable")
    return [np.sort(order[shard::num_shards]) for shard in range(num_shards)]


def local_batch_size(global_batch_size: int) -> int:
    count = jax.process_count()
    if global_batch_size <= 0 or global_batch_size % count:
        raise DataConfigError(
            f"global batch size {global_batch_size} must be a positive multiple of the number "
            f"of processes ({count}); change the batch size in the config."
        )
    return global_batch_size // count


@contextlib.contextmanager
def _naming_bad_files(source: Source, split: str, indices: np.ndarray) -> Iterator[None]:
    """Turns a tf.data decode error, or a file gone since the run began (input.cache=False
    reads each image every epoch), into one that names the file."""
    # Bound now: an iterator collected at interpreter exit closes here after TensorFlow's
    # modules are torn down (`tf.errors` is None by then).
    errors = import_tf().errors
    decode_error, not_found = errors.InvalidArgumentError, errors.NotFoundError
    try:
        yield
    except (decode_error, not_found) as e:
        bad = source.find_unreadable(split, indices)
        if bad is None:
            raise
        if isinstance(e, not_found):
            raise DataConfigError(
                f"{bad}: not found (split {split!r}): it was there when the run began. Put "
                "it back (a new run reads the data as they are then).") from e
        raise DataConfigError(
            f"{bad}: cannot be decoded as an image (split {split!r}). {source.unreadable_fix()}"
        ) from e


def _numpy_batches(ds: Any, guard: contextlib.AbstractContextManager) -> Iterator[dict]:
    """numpy batches of `ds`; closing the generator frees the tf.data iterator (and its
    prefetch / autotune threads) at once instead of at interpreter exit."""
    iterator = ds.with_options(_options()).as_numpy_iterator()
    try:
        with guard:
            yield from iterator
    finally:
        del iterator


def _prefetch(cfg: ml_collections.ConfigDict) -> int:
    tf = import_tf()
    return tf.data.AUTOTUNE if cfg.prefetch is None else int(cfg.prefetch)


def _options() -> Any:
    tf = import_tf()
    options = tf.data.Options()
    options.deterministic = True
    return options


def train_iterator(
    config: ml_collections.ConfigDict,
    info: DatasetInfo,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite, resumable stream of host-local {"image": f32 [B,S,S,3], "label": i32 [B]}:
    this process's shards' parts of each global batch, in shard order."""
    tf = import_tf()
    ds_cfg, in_cfg = config.dataset, config.input
    check_input_config(in_cfg)
    split = ds_cfg.train_split
    check_split(info, split, "config.dataset.train_split")
    num_shards = num_data_shards(config)
    check_data_shards(num_shards, global_batch_size)
    source = open_source(ds_cfg)
    labels = source.labels(split)
    shards = _check_shards(config, labels, info, split)
    per_host = num_shards // jax.process_count()
    mine = range(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)
    classes = np.unique(labels)
    # Decodes this host's shards into the cache: a read that fails on one host only (an image
    # a TFDS build cannot decode) must stop every host, not leave the others waiting for it in
    # the first training step.
    with sharding.stop_together(f"the reading of the training split {split!r}", hint=READ_HINT):
        streams = [
            _shard_stream(source, split, shards[shard], labels[shards[shard]], classes,
                          shard=shard, in_cfg=in_cfg, seed=seed, start_step=start_step,
                          batch=global_batch_size // num_shards)
            for shard in mine
        ]
    if len(streams) == 1:
        ds = streams[0]
    else:
        ds = tf.data.Dataset.zip(tuple(streams)).map(as_written(
            lambda *parts: {key: tf.concat([p[key] for p in parts], 0) for key in parts[0]}
        ))
    ds = ds.prefetch(_prefetch(in_cfg))
    read = np.sort(np.concatenate([shards[shard] for shard in mine]))
    return _numpy_batches(ds, _naming_bad_files(source, split, read))


def _check_shards(
    config: ml_collections.ConfigDict, labels: np.ndarray, info: DatasetInfo, split: str
) -> list[np.ndarray]:
    """The training split's shards, each non-empty; with class-balanced sampling (which draws
    every class on every shard) each must hold every class. Checked before training too."""
    shards = shard_indices(labels, num_data_shards(config))
    if len(shards[-1]) == 0:
        raise DataConfigError(
            f"config.dataset.train_split={split!r} has {len(labels)} examples, too few for "
            f"config.input.num_data_shards={len(shards)}; lower it."
        )
    if config.input.balance != "sampling":
        return shards
    counts = np.bincount(labels, minlength=info.num_classes)
    short = [(info.class_names[c], int(counts[c])) for c in np.unique(labels)
             if counts[c] < len(shards)]
    if short:
        names = ", ".join(f"{name!r} ({count})" for name, count in short)
        raise DataConfigError(
            f"config.input.balance='sampling' needs every class in each of the "
            f"{len(shards)} data shards, but split {split!r} has fewer examples than shards for "
            f"{names}. Lower config.input.num_data_shards, or use "
            "config.input.balance='loss_weights'."
        )
    return shards


def _shard_stream(
    source: Source,
    split: str,
    indices: np.ndarray,
    labels: np.ndarray,
    classes: np.ndarray,
    *,
    shard: int,
    in_cfg: ml_collections.ConfigDict,
    seed: int,
    start_step: int,
    batch: int,
) -> Any:
    """One shard's endless stream of augmented batches of `batch`, from `start_step` on."""
    tf = import_tf()
    n = len(indices)

    def read(part: np.ndarray) -> Any:
        return source.examples(split, part).map(
            as_written(lambda ex: (ex["image"], ex["label"])), num_parallel_calls=tf.data.AUTOTUNE
        )

    base = read(indices)
    if in_cfg.cache:
        base = base.cache()
        with _naming_bad_files(source, split, indices):
            # Decode once, fill the cache.
            base.reduce(np.int64(0), as_written(lambda count, _: count + 1))

    key = tf.constant([seed, shard], tf.int64)
    shuffle_key = tf.random.experimental.stateless_fold_in(key, 1)
    augment_key = tf.random.experimental.stateless_fold_in(key, 2)

    def epoch_seed(epoch: Any, salt: int = 0) -> Any:
        """A scalar int64 seed for (seed, shard, epoch, salt) (tf.data shuffle needs one)."""
        k = tf.random.experimental.stateless_fold_in(shuffle_key, epoch * 1024 + salt)
        return tf.random.stateless_uniform([], k, minval=None, maxval=None, dtype=tf.int64)

    if in_cfg.balance == "sampling":
        # Every shard holds every class of the split (checked), so drawing classes uniformly
        # on each shard is uniform over the split whatever the number of shards or hosts.
        if in_cfg.cache:
            per_class = [base.filter(as_written(lambda _, y, c=int(c): y == c)) for c in classes]
        else:  # each class's images alone: a filter of the shard decoded all of them for each
            # class's pass (~10x the decoding of balance="none" on RAF-DB compound's classes)
            per_class = [read(indices[labels == c]) for c in classes]
        counts = [int(np.sum(labels == c)) for c in classes]

        def one_epoch(epoch):
            # Each position draws a class uniformly, then the next example of that class's own
            # reshuffled, endless stream. An "epoch" is n draws.
            streams = [
                d.shuffle(m, seed=epoch_seed(epoch, 1 + i)).repeat()
                for i, (d, m) in enumerate(zip(per_class, counts, strict=True))
            ]
            choice_key = tf.random.experimental.stateless_fold_in(augment_key, -1 - epoch)
            choices = tf.data.Dataset.range(n).map(as_written(
                lambda j: tf.random.stateless_uniform(
                    [],
                    tf.random.experimental.stateless_fold_in(choice_key, j),
                    minval=0,
                    maxval=len(streams),
                    dtype=tf.int64,
                )
            ))
            return tf.data.Dataset.choose_from_datasets(streams, choices)
    else:
        buffer = n if in_cfg.shuffle_buffer is None else max(1, min(in_cfg.shuffle_buffer, n))

        def one_epoch(epoch):
            return base.shuffle(buffer, seed=epoch_seed(epoch), reshuffle_each_iteration=False)

    first = start_step * batch
    epoch0, skip = divmod(first, n)
    stream = tf.data.Dataset.range(epoch0, _FOREVER).flat_map(as_written(one_epoch)).skip(skip)
    positions = tf.data.Dataset.range(first, _FOREVER)

    def view(example, position):
        image, label = example
        seed_p = tf.random.experimental.stateless_fold_in(augment_key, position)
        return {"image": augment.train_view(image, seed_p, in_cfg), "label": label}

    ds = tf.data.Dataset.zip(stream, positions).map(as_written(view),
                                                   num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True)


def eval_iterator(
    config: ml_collections.ConfigDict,
    info: DatasetInfo,
    split: str,
    *,
    global_batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Every example of the host's slice of `split` once, in stored order, padded to full batches.

    Yields {"image", "label", "mask" (False on padding), "index" (position in the split, -1 on
    padding), "file_name" (object array of str)}. All processes yield the same number of
    batches (multi-host steps need that), even one whose read fails: with several processes it
    goes on with padding to the end, where every process raises.
    """
    check_input_config(config.input)
    check_split(info, split, "split")
    batch = local_batch_size(global_batch_size)
    total, count = info.split_sizes[split], jax.process_count()
    start, end = host_slice(total, count, jax.process_index())
    num_batches = math.ceil(math.ceil(total / count) / batch)
    # As sharding.stop_together: only where processes can vote (not when one process plays
    # each host in turn, as the tests do).
    together = jax.distributed.is_initialized() and jax.process_count() > 1
    produced, error = 0, None
    try:
        for b in _eval_batches(config, info, split, start, end, batch, num_batches * batch):
            produced += 1
            yield b
    except Exception as e:
        if not together:
            raise
        # A read that fails on this host only (an image a TFDS build cannot decode, a gs://
        # read): the other hosts are already in the next batch's step, a collective that
        # would wait for this one for ever. Padding keeps this host in step with them to the
        # end of the split, where every host learns of the error and stops.
        error = e
        for _ in range(num_batches - produced):
            yield _padding_batch(batch, config.input.image_size)
    if together:
        sharding.raise_if_any_failed(
            error, f"the evaluation of split {split!r}",
            hint=READ_HINT)


def _eval_batches(config: ml_collections.ConfigDict, info: DatasetInfo, split: str, start: int,
                  end: int, batch: int, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """eval_iterator's batches of examples [start, end) of `split`, padded to `rows`."""
    tf = import_tf()
    in_cfg = config.input
    size = in_cfg.image_size

    def view(ex):
        return {
            "image": augment.eval_view(ex["image"], in_cfg),
            "label": ex["label"],
            "mask": tf.constant(True),
            "index": tf.cast(ex["index"], tf.int32),
            "file_name": ex["file_name"],
        }

    row = {key: value[0] for key, value in _padding_batch(1, size).items()}
    row["file_name"] = tf.constant("")  # an object array is no tensor
    padding = tf.data.Dataset.from_tensors(row).repeat(rows - (end - start))
    source = open_source(config.dataset)
    _check_unchanged(source.info, info, split)
    if end > start:
        examples = source.examples(split, np.arange(start, end))
        ds = examples.map(as_written(view), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.concatenate(padding)
    else:
        ds = padding
    ds = ds.batch(batch, drop_remainder=True).prefetch(_prefetch(in_cfg))
    for b in _numpy_batches(ds, _naming_bad_files(source, split, np.arange(start, end))):
        b["file_name"] = np.asarray([f.decode("utf-8") for f in b["file_name"]], dtype=object)
        yield b


def _check_unchanged(now: DatasetInfo, then: DatasetInfo, split: str) -> None:
    """An evaluation opens its split again (an image folder is listed again): one changed since
    the run began would be misread. A file taken out was an IndexError's traceback, a class
    folder added shifted every label after it (metrics silently wrong), an image added was
    left out, an image moved to another class folder was scored under its new label."""
    changes = []
    if now.class_names != then.class_names:
        changes.append(f"classes {', '.join(now.class_names)} (were "
                       f"{', '.join(then.class_names)})")
    if now.split_sizes.get(split) != then.split_sizes[split]:
        changes.append(f"split {split!r} {now.split_sizes.get(split, 0)} examples (were "
                       f"{then.split_sizes[split]})")
    elif now.listings.get(split) != then.listings.get(split):  # the same counts
        changes.append(f"split {split!r} lists other files (an image moved to another class "
                       "folder, renamed, or one taken out and another added)")
    if changes:
        raise DataConfigError(
            f"{then.name} changed since the run began: {'; '.join(changes)}. Its evaluation of "
            f"split {split!r} would read other examples than the run's: put the data back as "
            "it was for this run (a new run reads it as it is then)."
        )


def _padding_batch(batch: int, size: int) -> dict[str, np.ndarray]:
    """A batch of eval_iterator's padding only (every row masked out; its rows also pad the
    end of each host's slice)."""
    return {
        "image": np.zeros([batch, size, size, 3], np.float32),
        "label": np.zeros([batch], np.int32),
        "mask": np.zeros([batch], bool),
        "index": np.full([batch], -1, np.int32),
        "file_name": np.asarray([""] * batch, dtype=object),
    }


def class_weights(config: ml_collections.ConfigDict, info: DatasetInfo) -> np.ndarray:
    """Inverse class frequency over the whole train split, with mean 1 over its examples.

    w_c = N / (K_present * n_c), sklearn's "balanced" weights; classes absent from the split
    get weight 0 (they never reach the loss).
    """
    split = config.dataset.train_split
    check_split(info, split, "config.dataset.train_split")
    labels = open_source(config.dataset).labels(split)
    counts = np.bincount(labels, minlength=info.num_classes).astype(np.float64)
    present = np.count_nonzero(counts)
    safe = np.maximum(counts, 1.0)
    return np.where(counts > 0, len(labels) / (present * safe), 0.0).astype(np.float32)
