"""Evaluation plots (matplotlib, Agg backend): logged as MLflow artifacts by training and the gates.

Each function takes plain arrays and returns a Figure; the caller logs or saves it and closes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers or CI; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from training.metrics import average_precision, calibration_bins, precision_recall_points  # noqa: E402

MAX_LEGEND_TAGS = 20


def score_scatter(
    pred: np.ndarray,
    true: np.ndarray,
    title: str = "test split",
    *,
    score_range: tuple[float, float] = (0.0, 1.0),
    score_name: str = "score",
) -> Figure:
    """Predicted against labelled score on the dataset's scale; unlabelled images (NaN) are left out."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    keep = np.isfinite(pred) & np.isfinite(true)
    low, high = score_range
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true[keep], pred[keep], s=12, alpha=0.7)
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set(
        xlabel=f"true {score_name}",
        ylabel=f"predicted {score_name}",
        title=title,
        xlim=(low, high),
        ylim=(low, high),
    )
    fig.tight_layout()
    return fig


def ap_per_tag(values: Mapping[str, float], title: str = "AP per tag (test split)") -> Figure:
    """Horizontal bars, weakest tag at the top: where a user's vocabulary needs more examples."""
    names = sorted(values, key=lambda n: (values[n], n), reverse=True)
    # Height grows with the vocabulary (a line per tag), within what a PNG viewer shows sensibly.
    fig, ax = plt.subplots(figsize=(6, min(40.0, 1.2 + 0.28 * max(1, len(names)))))
    ax.barh(names, [values[n] for n in names], color="tab:green")
    ax.set(xlabel="average precision", xlim=(0, 1), title=title)
    ax.tick_params(axis="y", labelsize=7 if len(names) > 30 else 9)
    fig.tight_layout()
    return fig


def srocc_by_kind(values: Mapping[str, float], title: str = "SROCC per distortion type") -> Figure:
    kinds = list(values)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(kinds, [values[k] for k in kinds], color="tab:blue")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(ylabel="SROCC", title=title, ylim=(-1, 1))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def pr_curves(probs: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """One precision-recall curve per tag, AP in the legend. A tag with no positives in the split has
    no curve but keeps its legend entry saying so: a missing tag would read as a plotting bug."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    empty = []
    for i, name in enumerate(names):
        recall, precision = precision_recall_points(probs[:, i], labels[:, i])
        if len(recall) == 0:
            empty.append(name)
            ax.plot([], [], ls=":", color="grey", label=f"{name} (no positives in this split)")
            continue
        ap = average_precision(probs[:, i], labels[:, i])
        ax.step(recall, precision, where="post", lw=1.2, label=f"{name} (AP {ap:.2f})")
    title = title or "tags: PR curves"
    if empty:
        title += f"\n{len(empty)} of {len(names)} tags have no positives in this split"
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05), title=title)
    # A legend of a large vocabulary would cover the curves; the per-tag AP chart names them all.
    if 0 < len(names) <= MAX_LEGEND_TAGS:
        ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.tight_layout()
    return fig


def calibration(
    probs: np.ndarray, labels: np.ndarray, ece: float, n_bins: int = 10, title: str = ""
) -> Figure:
    """Reliability diagram over every (image, tag) pair: bin confidence vs observed positive rate."""
    conf, rate, count = calibration_bins(probs, labels, n_bins)
    used = count > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(conf[used], rate[used], "o-", color="tab:orange")
    # How many (image, tag) pairs each point rests on: a point from 3 pairs is noise, not miscalibration.
    for x, y, n in zip(conf[used], rate[used], count[used], strict=True):
        ax.annotate(f"n={int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(
        xlabel="mean predicted probability",
        ylabel="fraction positive",
        xlim=(0, 1),
        ylim=(0, 1),
        title=title or f"tag calibration (ECE {ece:.3f})",
    )
    fig.tight_layout()
    return fig


def ladders(
    levels: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "score by distortion level",
    score_range: tuple[float, float] = (0.0, 1.0),
) -> Figure:
    """Predicted score against level (0 = pristine) per distortion kind, one line per source."""
    kinds = list(levels)
    cols = 3
    rows = max(1, int(np.ceil(len(kinds) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, kind in zip(axes.ravel(), kinds, strict=False):
        for source, scores in levels[kind].items():
            ax.plot(range(len(scores)), scores, "o-", ms=3, label=source)
        ax.set(title=kind, xlabel="level", ylim=score_range)
    for ax in axes.ravel()[len(kinds) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    # One line per source image in every panel, in the same order: one legend for the figure says which.
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    if 0 < len(names) <= MAX_LEGEND_TAGS:
        fig.legend(handles, names, title="source", fontsize=7, loc="center right")
        fig.tight_layout(rect=(0, 0, 0.85, 1))
    else:
        fig.tight_layout()
    return fig


def distributions(reference: np.ndarray, recent: np.ndarray, what: str) -> Figure:
    """Two histograms on one axis: the test split at training against recent predictions (drift)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i / 20 for i in range(21)]
    for values, label in ((reference, "test split (training)"), (recent, "recent")):
        values = np.clip(values[np.isfinite(values)], 0.0, 1.0)
        ax.hist(values, bins=bins, alpha=0.5, density=True, label=f"{label}, n={len(values)}")
    ax.set(xlabel=what, ylabel="density")
    ax.legend()
    fig.tight_layout()
    return fig


def tag_rate_change(reference: Mapping[str, float], recent: Mapping[str, float]) -> Figure:
    """Each tag's rate at training and now, side by side, the largest change at the top."""
    names = sorted(reference, key=lambda t: abs(recent[t] - reference[t]))
    fig, ax = plt.subplots(figsize=(6, min(40.0, 1.2 + 0.35 * max(1, len(names)))))
    y = np.arange(len(names))
    ax.barh(y - 0.2, [reference[t] for t in names], height=0.4, label="test split (training)")
    ax.barh(y + 0.2, [recent[t] for t in names], height=0.4, label="recent")
    ax.set_yticks(y, names)
    ax.set(xlabel="share of images given the tag", xlim=(0, 1))
    ax.legend()
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
