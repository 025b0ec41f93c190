"""Canary and shadow of a challenger beside the champion: which requests go where, and how well the two
agree. Pure logic (no HTTP, no registry): tested on plain Python (tests/unit/test_canary.py).

Canary: a share of the users is answered by the challenger. Sticky: the route is a hash of the request
key (``X-Lightbox-Key``), so one user sees one model from one request to the next.
Shadow: a sampled share of requests is also computed by the challenger, in the background; its answers
are never returned, only compared with the champion's: scores on the unit scale (each a fraction of its
own model's range, so a challenger trained on 0..10 compares with a champion on 1..5), tags by name on
the ones both answer (which ones is recorded, so a renamed tag is seen not to be compared).
"""

from __future__ import annotations

import collections
import hashlib
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

# Undefined (the window's scores constant: the same image shadowed again and again) is None, never 0,
# which `lightbox promote` would read as total disagreement.
from training.metrics import srocc_or_none

KEY_HEADER = "x-lightbox-key"


def canary_bucket(key: str, salt: str = "") -> float:
    """A stable point in [0, 100) for ``key``: uniform over keys, the same on every replica and restart
    (blake2b, not Python's per-process salted ``hash``)."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


def routes_to_challenger(
    key: str | None, percent: float, salt: str = "", rng: random.Random | None = None
) -> bool:
    """True when this request goes to the challenger. Without a key there is nothing to stick to: a
    fresh draw per request."""
    if percent <= 0:
        return False
    point = canary_bucket(key, salt) if key is not None else (rng or random).random() * 100
    return point < percent


def unit_score(score: float, score_range: tuple[float, float] | None) -> float:
    """A model's score as a fraction of its own range (NaN for a tags-only model, which has none)."""
    if score_range is None:
        return float("nan")
    low, high = score_range
    return (float(score) - low) / (high - low)


@dataclass(frozen=True)
class AgreementSummary:
    samples: int  # image pairs in the window
    score_srocc: float | None  # None: fewer than 3 pairs, a tags-only model, or constant scores
    score_mae_unit: float | None  # mean |difference| of the unit scores: a fraction of a range
    tag_agreement: dict[str, float]  # tag -> share of images where both sides decide it the same way
    tags_not_compared: tuple[str, ...] = ()  # either side's tags the other does not answer

    def to_tags(self, prefix: str = "shadow.") -> dict[str, str]:
        """As registry version tags (strings). Which tags were compared and which were not is always
        written ("-": none), so a recording never leaves an older one's list behind."""
        out = {f"{prefix}samples": str(self.samples)}
        if self.score_srocc is not None:
            out[f"{prefix}score_srocc"] = f"{self.score_srocc:.4f}"
        if self.score_mae_unit is not None:
            out[f"{prefix}score_mae_unit"] = f"{self.score_mae_unit:.4f}"
        if self.tag_agreement:
            out[f"{prefix}tag_agreement_min"] = f"{min(self.tag_agreement.values()):.4f}"
        out[f"{prefix}tags_compared"] = ",".join(self.tag_agreement) or "-"
        out[f"{prefix}tags_not_compared"] = ",".join(self.tags_not_compared) or "-"
        return out


class Agreement:
    """Champion vs challenger on the same images, over the last ``window`` images (a challenger that
    drifted away an hour ago is judged on what it does now).

    Scores arrive on the unit scale (``unit_score``: each side by its own model's range). Tags compare
    on the vocabulary both share, each decided at ``threshold``; the others are listed
    (``not_compared``). Thread-safe: shadow comparisons finish on the event loop, summaries are read at
    scrape time.
    """

    def __init__(
        self,
        champion_tags: tuple[str, ...],
        challenger_tags: tuple[str, ...],
        threshold: float = 0.5,
        window: int = 5000,
    ) -> None:
        if window < 3:
            raise ValueError(f"window must be >= 3, got {window!r}")
        self.shared = tuple(t for t in champion_tags if t in challenger_tags)
        self.not_compared = tuple(t for t in (*champion_tags, *challenger_tags) if t not in self.shared)
        self._champion_idx = [champion_tags.index(t) for t in self.shared]
        self._challenger_idx = [challenger_tags.index(t) for t in self.shared]
        self.threshold = threshold
        self._pairs: collections.deque[tuple[float, float, np.ndarray]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def add(
        self,
        champion_scores: np.ndarray,
        challenger_scores: np.ndarray,
        champion_tags: np.ndarray,
        challenger_tags: np.ndarray,
    ) -> None:
        """One request's images: unit scores [N] each, tag probabilities [N, K] in each side's order."""
        if len(champion_scores) != len(challenger_scores):
            raise ValueError(f"{len(champion_scores)} champion scores vs {len(challenger_scores)} challenger")
        same = (champion_tags[:, self._champion_idx] >= self.threshold) == (
            challenger_tags[:, self._challenger_idx] >= self.threshold
        )
        with self._lock:
            for a, b, s in zip(champion_scores, challenger_scores, same, strict=True):
                self._pairs.append((float(a), float(b), s))

    def summary(self) -> AgreementSummary:
        with self._lock:
            pairs = list(self._pairs)
        if not pairs:
            return AgreementSummary(0, None, None, {}, self.not_compared)
        a = np.array([p[0] for p in pairs])
        b = np.array([p[1] for p in pairs])
        scored = np.isfinite(a) & np.isfinite(b)  # a tags-only model scores NaN
        rho = srocc_or_none(b[scored], a[scored]) if scored.sum() >= 3 else None
        mad = float(np.abs(a[scored] - b[scored]).mean()) if scored.any() else None
        same = np.stack([p[2] for p in pairs]) if self.shared else np.zeros((len(pairs), 0), bool)
        tags = {t: float(same[:, i].mean()) for i, t in enumerate(self.shared)}
        return AgreementSummary(len(pairs), rho, mad, tags, self.not_compared)


class ShadowMetrics:
    """The agreement as Prometheus gauges, computed from ``Agreement.summary`` at scrape time (a
    collector: the window changes with every shadow answer, the scrape reads it once)."""

    def __init__(self, registry: CollectorRegistry, summary: Callable[[], AgreementSummary]) -> None:
        self.summary = summary
        self.failures = Counter("lightbox_shadow_failures", "Shadow requests that failed", registry=registry)
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # the names are fixed, but not registered for collision checks: one per registry anyway

    def collect(self) -> Iterator[Metric]:
        s = self.summary()
        nan = float("nan")
        yield GaugeMetricFamily("lightbox_shadow_samples", "Image pairs in the agreement window", s.samples)
        yield GaugeMetricFamily(
            "lightbox_shadow_score_srocc",
            "Challenger vs champion score SROCC (shadow)",
            nan if s.score_srocc is None else s.score_srocc,
        )
        yield GaugeMetricFamily(
            "lightbox_shadow_score_mae_unit",
            "Mean |challenger - champion| score, each a fraction of its own model's range (shadow)",
            nan if s.score_mae_unit is None else s.score_mae_unit,
        )
        tags = GaugeMetricFamily(
            "lightbox_shadow_tag_agreement",
            "Share of images where challenger and champion decide a tag the same way (shadow)",
            labels=["tag"],
        )
        for tag, share in s.tag_agreement.items():
            tags.add_metric([tag], share)
        yield tags
