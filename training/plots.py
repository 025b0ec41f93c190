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


def score_scatter(pred: np.ndarray, true: np.ndarray, title: str = "test split") -> Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true, pred, s=12, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlabel="true score", ylabel="predicted score", title=title, xlim=(0, 1), ylim=(0, 1))
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
    """One precision-recall curve per tag that has positives, AP in the legend."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, name in enumerate(names):
        recall, precision = precision_recall_points(probs[:, i], labels[:, i])
        if len(recall) == 0:
            continue
        ap = average_precision(probs[:, i], labels[:, i])
        ax.step(recall, precision, where="post", lw=1.2, label=f"{name} (AP {ap:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.05), title=title or "tags: PR curves")
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
    levels: Mapping[str, Mapping[str, Sequence[float]]], title: str = "score by distortion level"
) -> Figure:
    """Predicted score against level (0 = pristine) per distortion kind, one line per source."""
    kinds = list(levels)
    cols = 3
    rows = max(1, int(np.ceil(len(kinds) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, kind in zip(axes.ravel(), kinds, strict=False):
        for source, scores in levels[kind].items():
            ax.plot(range(len(scores)), scores, "o-", ms=3, label=source)
        ax.set(title=kind, xlabel="level", ylim=(0, 1))
    for ax in axes.ravel()[len(kinds) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
