"""Evaluation metrics, pure numpy/scipy: the same numbers in tuning, the final run and the gates."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import stats


def _finite(x: float) -> float:
    # A constant prediction has no rank correlation; report 0, not NaN, so gates compare cleanly.
    return float(x) if np.isfinite(x) else 0.0


def srocc(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman rank-order correlation: does the model order images like the labels do? 0 where it is
    undefined (a constant side), so that a constant model fails a floor."""
    rho = srocc_or_none(pred, true)
    return 0.0 if rho is None else rho


def srocc_or_none(pred: np.ndarray, true: np.ndarray) -> float | None:
    """``srocc``, None where it is undefined (fewer than 2 pairs, or a side constant): for a comparison
    of two models, where equal constant scores are not a disagreement and must not be recorded as 0."""
    if len(pred) < 2:
        return None
    rho = float(stats.spearmanr(pred, true).statistic)
    return rho if np.isfinite(rho) else None


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


def score_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """SROCC, PLCC and MAE over the images with a score label (NaN in ``true`` = unlabelled).

    Empty when nothing is labelled or ``pred`` is all NaN (a tags-only model): skipped, not NaN, so a
    gate reports the check as not applicable instead of comparing NaN. Give normalised scores ([0, 1])
    and the MAE is a fraction of the score range, comparable across datasets.
    """
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    labelled = np.isfinite(true)
    if not labelled.any() or np.isnan(pred).all():
        return {}
    p, t = pred[labelled], true[labelled]
    return {"score_srocc": srocc(p, t), "score_plcc": plcc(p, t), "score_mae": mae(p, t)}


def tag_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """mAP and micro-F1; empty for a model without tags (K = 0)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] == 0:
        return {}
    return {"tags_map": mean_average_precision(probs, labels), "tags_micro_f1": micro_f1(probs, labels)}


def evaluate(
    score_pred: np.ndarray | None,
    score_true: np.ndarray | None,
    tag_probs: np.ndarray,
    tag_true: np.ndarray,
) -> dict[str, float]:
    """The metric set every run reports, with names consistent across runs and trials. Keys of a
    head the model or the labels lack are left out (``score_pred`` None: no score head)."""
    out: dict[str, float] = {}
    if score_pred is not None and score_true is not None:
        out |= score_metrics(score_pred, score_true)
    return out | tag_metrics(tag_probs, tag_true)


def ap_by_tag(probs: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """AP per tag, only for tags with at least one positive (the others have no AP to judge)."""
    return {n: ap for n, ap in per_tag_ap(probs, labels, tuple(names)).items() if not np.isnan(ap)}


_METRIC_UNSAFE = re.compile(r"[^\w.\- ]")


def metric_names(prefix: str, names: Sequence[str]) -> dict[str, str]:
    """name -> an MLflow-safe metric key ``prefix + name``, unique per name.

    MLflow refuses keys outside ``[/\\w.\\- :]`` and a tag is the user's word ("b&w", "50/50"):
    other characters become "_"; a key already taken gets a "-2", "-3" suffix.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        key = prefix + _METRIC_UNSAFE.sub("_", name)
        candidate, n = key, 1
        while candidate in taken:
            n += 1
            candidate = f"{key}-{n}"
        taken.add(candidate)
        out[name] = candidate
    return out


def calibration_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width confidence bins over every (image, tag) pair: (mean confidence, positive rate, count).

    Empty bins report NaN confidence and rate with a zero count, so a plot can skip them.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in size: {p.shape} vs {y.shape}")
    # Bin n holds (n/B, (n+1)/B]; p == 0 goes to the first bin.
    idx = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=n_bins) / count
        rate = np.bincount(idx, weights=y, minlength=n_bins) / count
    return conf, rate, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean |confidence - positive rate| over the bins (0 = calibrated)."""
    conf, rate, count = calibration_bins(probs, labels, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    used = count > 0
    return float(np.sum(count[used] * np.abs(conf[used] - rate[used])) / total)


def precision_recall_points(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every rank cut-off, highest confidence first; empty when no positives."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-np.asarray(probs), kind="stable")
    hits = np.cumsum(labels[order])
    precision = hits / np.arange(1, len(hits) + 1)
    recall = hits / labels.sum()
    return recall, precision


def srocc_by_kind(pred: np.ndarray, true: np.ndarray, distortions: list[str]) -> dict[str, float]:
    """SROCC within each distortion kind: the images carrying that kind plus the pristine ones.

    ``distortions`` is the manifest column ("none", "blur:3", "blur:3+noise:2"). The pristine images
    anchor every ladder, so a kind whose images all share one level still has an order to get right.
    Kinds with fewer than 3 images are left out (a rank correlation of two points says nothing).
    """
    pred, true = np.asarray(pred), np.asarray(true)
    kinds_of = [set() if d == "none" else {p.split(":")[0] for p in d.split("+")} for d in distortions]
    pristine = np.array([not k for k in kinds_of], dtype=bool)
    out: dict[str, float] = {}
    for kind in sorted(set().union(*kinds_of)):
        mask = pristine | np.array([kind in k for k in kinds_of], dtype=bool)
        if mask.sum() >= 3:
            out[kind] = srocc(pred[mask], true[mask])
    return out
