"""Evaluation metrics, pure numpy/scipy: the same numbers in tuning, the final run and the gates."""

from __future__ import annotations

import numpy as np
from scipy import stats


def _finite(x: float) -> float:
    # A constant prediction has no rank correlation; report 0, not NaN, so gates compare cleanly.
    return float(x) if np.isfinite(x) else 0.0


def srocc(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman rank-order correlation: does the model order images like the labels do?"""
    if len(pred) < 2:
        return 0.0
    return _finite(stats.spearmanr(pred, true).statistic)


def plcc(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson linear correlation."""
    if len(pred) < 2 or np.std(pred) == 0 or np.std(true) == 0:
        return 0.0
    return _finite(stats.pearsonr(pred, true).statistic)


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(true))))


def average_precision(probs: np.ndarray, labels: np.ndarray) -> float:
    """AP of one tag (area under the precision-recall step curve); NaN when the tag has no positives."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(probs), kind="stable")
    hits = labels[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at_k[hits].sum() / n_pos)


def per_tag_ap(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    return {n: average_precision(probs[:, i], labels[:, i]) for i, n in enumerate(names)}


def mean_average_precision(probs: np.ndarray, labels: np.ndarray) -> float:
    """mAP over the tags that have at least one positive."""
    aps = [average_precision(probs[:, i], labels[:, i]) for i in range(labels.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else 0.0


def micro_f1(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    pred = np.asarray(probs) >= threshold
    labels = np.asarray(labels).astype(bool)
    tp = float((pred & labels).sum())
    fp = float((pred & ~labels).sum())
    fn = float((~pred & labels).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def evaluate(
    score_pred: np.ndarray, score_true: np.ndarray, tag_probs: np.ndarray, tag_true: np.ndarray
) -> dict[str, float]:
    """The metric set every run reports, with names consistent across runs and trials."""
    return {
        "score_srocc": srocc(score_pred, score_true),
        "score_plcc": plcc(score_pred, score_true),
        "score_mae": mae(score_pred, score_true),
        "tags_map": mean_average_precision(tag_probs, tag_true),
        "tags_micro_f1": micro_f1(tag_probs, tag_true),
    }
