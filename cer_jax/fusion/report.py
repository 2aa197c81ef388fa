"""The fusion report: report.json, report.md, PNG figures and TensorBoard events in one folder.

TensorBoard gets the report as it reads best there: its Markdown tables as text summaries and
its figures as images, and no scalars (a fusion result is one number per system, not a curve
over steps; scalars are left to the members' training curves).

Everything is written to a temporary folder inside the output folder first and moved into place
at the end, so a failed run never leaves a half-written report behind. Every path goes through
etils epath, so the output folder may be remote (gs://...).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from cer_jax import plots

CONFUSION_PNG = "confusion_{strategy}_{split}.png"
PER_CLASS_PNG = "per_class_f1_{split}.png"


def _percent(value: float | None) -> str:
    """A fraction in %; None (a class's F1 that is 0/0) is 'n/a'."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def absent_classes_note(classes: Sequence[str], split: str) -> str:
    """What 'n/a' in the per-class table means, and what it does to macro F1."""
    return (
        f"{split} has no example of {', '.join(classes)}: its F1 is n/a (0/0, undefined) for a "
        "system that never predicts it, and 0 for one that does. Macro F1 (scikit-learn's "
        f"default, as the follow-up paper) averages over the classes in {split}'s labels or a "
        "system's predictions, so it leaves n/a classes out: systems' macro F1 may average "
        "over different classes."
    )


def _systems(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, metrics by split) for every member, then every strategy."""
    rows = [(m["name"], "member", m["metrics"]) for m in report["members"]]
    for name, row in report["strategies"].items():
        kind = "fusion"
        if name == report["paper_strategy"]:
            kind += " (paper)"
        if name == report["best_strategy"]:
            kind += " (best)"
        rows.append((name, kind, row["metrics"]))
    return rows


def _unknown(value: Any) -> str:
    """A value that an older export did not record is '?'."""
    return "?" if value is None else str(value)


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals, for reading (report.json keeps them exact)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def selection_note(report: dict[str, Any]) -> str:
    """The sentence that says where weights and hyper-parameters were chosen."""
    if report["select_on"] == "test":
        note = (
            "**WARNING: fusion weights and hyper-parameters were chosen on the test split "
            "(--select_on=test, the paper's protocol). Test numbers are optimistic: they are not "
            "a held-out estimate.**"
        )
    else:
        held_out = [s for s in report["eval_splits"] if s != report["select_on"]]
        note = (
            f"Fusion weights and hyper-parameters were chosen on the {report['select_on']} "
            f"split; {', '.join(held_out) or 'no split'} is held out. The best strategy has the "
            f"highest out-of-fold macro F1 on {report['select_on']} "
            f"({report.get('selection_cv_folds', 'k')}-fold cross-validation). "
            f"Every strategy but the uniform ones is fitted on {report['select_on']}, so its "
            f"{report['select_on']} figures are in-sample; its CV figure is not."
        )
    if report.get("training_leaks"):
        note += ("\n\n**WARNING: the members' training saw what fusion treats as unseen: "
                 + "; ".join(report["training_leaks"])
                 + ". Those splits' numbers are optimistic.**")
    if report.get("unfinished_members"):
        note += ("\n\n**WARNING: not every member finished its training: "
                 + "; ".join(report["unfinished_members"]) + ".**")
    if report.get("identical_members"):
        note += ("\n\n**WARNING: " + "; ".join(report["identical_members"]) + ".**")
    return note


def _with_interval(metrics: dict[str, Any], key: str) -> str:
    """'78.33 [75.6, 81.0]': the figure (%) and its bootstrap interval, if the report has one."""
    interval = metrics.get(f"{key}_ci")
    if interval is None:
        return _percent(metrics[key])
    return f"{_percent(metrics[key])} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _confidence(bootstrap: dict[str, Any]) -> str:
    return f"{100 * bootstrap['confidence']:g} %"


def accuracy_table(report: dict[str, Any]) -> str:
    """Accuracy and macro F1 (%) of every member and strategy on every reported split, and the
    out-of-fold macro F1 on the selection split that picks the best strategy."""
    splits = report["eval_splits"]
    header = (
        ["system", "kind"]
        + [f"{s} {m}" for s in splits for m in ("acc %", "macro F1 %")]
        + [f"CV macro F1 % on {report['select_on']}"]
    )
    cv_scores = {n: r["selection_cv_macro_f1"] for n, r in report["strategies"].items()}
    rows = [
        [name, kind]
        + [_with_interval(metrics[s], m) for s in splits for m in ("accuracy", "macro_f1")]
        + [_percent(cv_scores[name]) if name in cv_scores else "-"]
        for name, kind, metrics in _systems(report)
    ]
    # A paper table states its test set's size: every system scores every example once.
    first = _systems(report)[0][2]
    sizes = ", ".join(f"{s} {first[s]['num_examples']}" for s in splits)
    note = f"Examples (each scored once): {sizes}."
    bootstrap = report.get("bootstrap")
    if bootstrap:
        note += (f" Brackets: {_confidence(bootstrap)} percentile bootstrap intervals over each "
                 f"split's examples ({bootstrap['samples']} resamples with replacement, seed "
                 f"{bootstrap['seed']}).")
    return _table(header, rows) + "\n\n" + note


def _signed(value: float, interval: Sequence[float]) -> str:
    return f"{100 * value:+.2f} [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def differences_table(report: dict[str, Any]) -> str | None:
    """Fusion (the best, the paper's) minus each member, in percentage points, with paired
    bootstrap intervals; None without a bootstrap."""
    bootstrap = report.get("bootstrap")
    if not bootstrap:
        return None
    splits = report["eval_splits"]
    rows = {}
    for row in bootstrap["fusion_minus_member"]:
        rows.setdefault((row["fusion"], row["member"], row["best_member"]), {})[row["split"]] = row
    table_rows = []
    for (fusion, member, best_member), by_split in rows.items():
        roles = [r for r, name in (("best", report["best_strategy"]),
                                   ("paper", report["paper_strategy"])) if name == fusion]
        label = f"{fusion} ({', '.join(roles)}) - {member}" + (" (best member)" if best_member
                                                               else "")
        table_rows.append([label] + [
            _signed(by_split[s][m], by_split[s][f"{m}_ci"])
            for s in splits for m in ("accuracy", "macro_f1")
        ])
    header = ["fusion - member"] + [f"{s} {m}" for s in splits
                                    for m in ("acc diff (points)", "macro F1 diff (points)")]
    confidence = _confidence(bootstrap)
    note = (
        f"Percentage points, with {confidence} paired percentile bootstrap intervals (both "
        f"systems scored on the same {bootstrap['samples']} resamples of each split's examples, "
        f"seed {bootstrap['seed']}): an interval above 0 backs \"the fusion beats that member\" "
        f"on that split, one that holds 0 does not (each is a {confidence} interval on its own, "
        f"not jointly over the rows). The best member ({bootstrap['best_member']}) has the "
        f"highest macro F1 on {report['select_on']}."
    )
    return _table(header, table_rows) + "\n\n" + note


def summary_table(report: dict[str, Any]) -> str:
    """Where fusion was chosen, the accuracy table, and fusion minus each member: what the CLIs
    print."""
    parts = [selection_note(report), accuracy_table(report), differences_table(report)]
    return "\n\n".join(part for part in parts if part)


# Fitted parameters with one value per member, in the members' order (report.json's lists).
_PER_MEMBER = ("weights", "member_scores", "temperatures")


def _by_member(report: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """`params` with each per-member list keyed by member name: a paper table quotes each
    member's weight, and a bare list leaves the reader to match it by position."""
    names = [m["name"] for m in report["members"]]
    return {
        key: dict(zip(names, value, strict=True))
        if key in _PER_MEMBER and isinstance(value, list) and len(value) == len(names) else value
        for key, value in params.items()
    }


def sections(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The report's Markdown sections as (key, title, body), in reading order."""
    splits = report["eval_splits"]
    parts = [
        ("summary", "Accuracy and macro F1", accuracy_table(report)),
    ]
    if report.get("bootstrap"):
        parts.append(("fusion_minus_member", "Fusion minus each member (paired bootstrap)",
                      differences_table(report)))
    parts += [
        (
            "members",
            "Members",
            _table(
                ["name", "best step", "seed", "data seed", "workdir"],
                [[m["name"], str(m["step"]), _unknown(m.get("seed")),
                  _unknown(m.get("data_seed")), m["workdir"]] for m in report["members"]],
            ),
        ),
    ]
    for split in splits:
        table = _table(
            ["system", *report["class_names"]],
            [
                [name]
                + [_percent(metrics[split]["per_class_f1"][c]) for c in report["class_names"]]
                for name, _, metrics in _systems(report)
            ],
        )
        absent = report.get("absent_classes", {}).get(split)
        if absent:
            table += "\n\n" + absent_classes_note(absent, split)
        parts.append((f"per_class_f1/{split}", f"Per-class F1 (%) on {split}", table))
    for strategy, rows in report["ablation"].items():
        table = _table(
            ["members"] + [f"{s} {m}" for s in splits for m in ("acc %", "macro F1 %")],
            [
                [" + ".join(row["members"])]
                + [_percent(row["metrics"][s][m]) for s in splits for m in ("accuracy", "macro_f1")]
                for row in rows
            ],
        )
        parts.append((f"ablation/{strategy}", f"Ablation over member subsets: {strategy}", table))
    chosen = "\n".join(
        f"- `{name}`: `{json.dumps(_rounded(_by_member(report, row['params'])))}`"
        for name, row in report["strategies"].items()
    )
    parts.append(("chosen", f"Chosen on {report['select_on']}", chosen))
    return parts


def markdown(report: dict[str, Any], figures: dict[str, str]) -> str:
    parts = ["# Late-fusion report", selection_note(report)]
    for _, title, body in sections(report):
        parts += [f"## {title}", body]
    parts.append("## Figures")
    parts += [f"![{title}]({path})" for title, path in figures.items()]
    return "\n\n".join(parts) + "\n"


def per_class_f1_figure(report: dict[str, Any], split: str) -> Any:
    """Grouped bars: per-class F1 of every member and of the best strategy on `split`."""
    classes = report["class_names"]
    best = report["best_strategy"]
    series = [(m["name"], m["metrics"][split]) for m in report["members"]]
    series.append((f"fused: {best}", report["strategies"][best]["metrics"][split]))
    width = 0.8 / len(series)
    positions = np.arange(len(classes))
    fig = plots.new_figure((max(8.0, 0.9 * len(classes) + 4), 4.5))  # + 2 in for the legend
    ax = fig.subplots()
    for i, (name, metrics) in enumerate(series):
        values = [np.nan if (f := metrics["per_class_f1"][c]) is None else f for c in classes]
        offsets = positions + (i - (len(series) - 1) / 2) * width
        ax.bar(offsets, values, width, label=name)
        # An undefined F1 (0/0) and an F1 of 0 both draw no bar: say which is which.
        for x, value in zip(offsets, values, strict=True):
            if np.isnan(value):
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(positions, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.2)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.set_ylabel(f"F1 on {split}")
    fig.suptitle(f"Per-class F1 on {split}: members vs fused ({best})")  # not above narrow axes
    # Beside the bars, one system a line: in one row above them, five members' names and the
    # fused one's ran past the figure's edges with 7 classes or fewer.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


TENSORBOARD_PREFIX = "fusion"


def _write_tensorboard(directory: str, report: dict[str, Any], images: dict[str, Any]) -> None:
    """The report's sections as Markdown text summaries and its figures as images, via CLU."""
    import tensorflow as tf
    from clu import metric_writers

    tf.config.set_visible_devices([], "GPU")
    texts = {
        f"{TENSORBOARD_PREFIX}/{key}": f"**{title}**\n\n{body}"
        for key, title, body in sections(report)
    }
    texts[f"{TENSORBOARD_PREFIX}/summary"] = summary_table(report)  # with where it was chosen
    writer = metric_writers.SummaryWriter(directory)
    writer.write_texts(0, texts)
    writer.write_images(
        0, {f"{TENSORBOARD_PREFIX}/figures/{name}": pixels[None] for name, pixels in images.items()}
    )
    writer.close()


def _remove_previous_report(out: epath.Path) -> None:
    """A rerun into the same folder replaces the previous report's figures and events."""
    for path in out.iterdir():
        if path.name.startswith(("events.out.tfevents.", "confusion_", "per_class_f1_")):
            path.unlink()


def write_report(out: str | epath.Path, report: dict[str, Any]) -> dict[str, str]:
    """Writes report.json, report.md, the figures and TensorBoard events into `out`.

    Returns {file name: path} of the files written.
    """
    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split = "test" if "test" in report["eval_splits"] else report["eval_splits"][-1]
    best = report["best_strategy"]
    confusion_file = CONFUSION_PNG.format(strategy=best, split=split)
    per_class_file = PER_CLASS_PNG.format(split=split)
    figures = {
        f"confusion matrix, {best}, {split}": confusion_file,
        f"per-class F1, {split}": per_class_file,
    }
    report = {**report, "figures": figures}
    staging = out / f".report-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        confusion = np.asarray(report["strategies"][best]["metrics"][split]["confusion_matrix"])
        images = {}
        for file_name, fig in (
            (
                confusion_file,
                plots.confusion_matrix_figure(
                    confusion, report["class_names"], f"{best} on {split}"
                ),
            ),
            (per_class_file, per_class_f1_figure(report, split)),
        ):
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=120)
            (staging / file_name).write_bytes(png.getvalue())
            images[file_name.removesuffix(".png")] = plots.figure_to_array(fig)
        (staging / "report.json").write_text(json.dumps(report, indent=2))
        (staging / "report.md").write_text(markdown(report, figures))
        _write_tensorboard(str(staging), report, images)
        _remove_previous_report(out)
        written = {}
        for path in sorted(staging.iterdir(), key=lambda p: p.name):
            written[path.name] = str(out / path.name)
            path.replace(out / path.name)
    finally:
        if staging.exists():
            staging.rmtree()
    return written
