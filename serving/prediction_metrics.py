"""What the served model answers, as Prometheus metrics: the distribution of its scores and how often it
gives each tag, per model version. Drift shows here first (a camera firmware that blurs every upload
moves the score histogram within minutes); ``pipelines/monitor.py`` compares the stored predictions with
the model's own test split on a schedule.

Prometheus keeps these cumulative; a dashboard or alert reads them over a window (``rate(...[1h])``),
which is the rolling view. Scores are normalised to the model's range, so one set of buckets fits a
0-1 quality score and a 1-10 rating alike. Labelled by version: after a hot swap the new version's
series start from zero instead of mixing with the old one's.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

_UNIT_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class PredictionMetrics:
    def __init__(self, registry: CollectorRegistry, threshold: float) -> None:
        self.threshold = threshold
        self.score = Histogram(
            "lightbox_prediction_score_unit",
            "Scores answered, normalised to the model's score range (0 = its low end, 1 = its high end)",
            ["version"],
            buckets=_UNIT_BUCKETS,
            registry=registry,
        )
        self.images = Counter(
            "lightbox_prediction_images", "Images the model answered", ["version"], registry=registry
        )
        self.tag_given = Counter(
            "lightbox_prediction_tag_given",
            "Images given a tag at the default threshold (over lightbox_prediction_images: its rate)",
            ["version", "tag"],
            registry=registry,
        )

    def observe(
        self,
        version: str,
        tag_names: tuple[str, ...],
        score_range: tuple[float, float] | None,
        scores: np.ndarray,
        tag_probs: np.ndarray,
    ) -> None:
        """One batch's answers (a compute thread; prometheus_client is thread-safe)."""
        self.images.labels(version).inc(len(scores))
        if score_range is not None:
            low, high = score_range
            for u in np.clip((scores - low) / (high - low), 0.0, 1.0):
                if np.isfinite(u):
                    self.score.labels(version).observe(float(u))
        if tag_probs.size:
            given = (tag_probs >= self.threshold).sum(axis=0)
            for tag, count in zip(tag_names, given, strict=True):
                if count:
                    self.tag_given.labels(version, tag).inc(int(count))
