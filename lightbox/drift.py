"""Drift of a model's predictions: recent answers against the distribution on its own test split.

Pure math on numpy arrays (no MLflow, no database): the monitor pipeline feeds it, tests/unit/test_drift.py
checks that it fires on a shifted stream and stays quiet on one drawn from the reference.

Score: the population stability index (PSI) over the reference's deciles; the usual reading is < 0.1
stable, 0.1-0.25 moderate, > 0.25 a shift worth acting on. Tags: each tag's rate (share of images at or
over the threshold) and the Jensen-Shannon divergence of its yes/no distribution (base 2, in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# An empty bin would make PSI infinite: a share never goes below this.
_FLOOR = 1e-4


def psi(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``recent`` against ``reference``, over the reference's quantile
    bins (each holds ~1/bins of the reference; the outer ones are open-ended)."""
    reference = np.asarray(reference, float)
    recent = np.asarray(recent, float)
    reference, recent = reference[np.isfinite(reference)], recent[np.isfinite(recent)]
    if len(reference) < bins or len(recent) == 0:
        raise ValueError(
            f"need >= {bins} reference and >= 1 recent values, got {len(reference)}, {len(recent)}"
        )
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=len(edges) + 1)
    e = np.maximum(expected / expected.sum(), _FLOOR)
    a = np.maximum(actual / actual.sum(), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def tag_rates(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Share of images each tag is given at ``threshold``: [N, K] -> [K]."""
    probs = np.asarray(probs, float)
    return (probs >= threshold).mean(axis=0) if len(probs) else np.zeros(probs.shape[1])


def bernoulli_js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (base 2) between yes/no distributions with yes-rates ``p`` and ``q``."""
    p = np.clip(np.asarray(p, float), 0, 1)
    q = np.clip(np.asarray(q, float), 0, 1)
    m = (p + q) / 2

    def kl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            yes = np.where(x > 0, x * np.log2(x / y), 0.0)
            no = np.where(x < 1, (1 - x) * np.log2((1 - x) / (1 - y)), 0.0)
        return yes + no

    return np.clip((kl(p, m) + kl(q, m)) / 2, 0.0, 1.0)


@dataclass(frozen=True)
class DriftReport:
    score_psi: float | None  # None: a tags-only model
    tag_rate_reference: dict[str, float]
    tag_rate_recent: dict[str, float]
    tag_js: dict[str, float]
    recent_count: int
    drifted: bool
    reasons: list[str]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for an MLflow run."""
        out: dict[str, float] = {"recent_count": float(self.recent_count), "drifted": float(self.drifted)}
        if self.score_psi is not None:
            out["score_psi"] = self.score_psi
        for tag, js in self.tag_js.items():
            out[f"tag_js.{tag}"] = js
            out[f"tag_rate_change.{tag}"] = self.tag_rate_recent[tag] - self.tag_rate_reference[tag]
        return out


def compare(
    tag_names: tuple[str, ...],
    reference_scores: np.ndarray | None,
    reference_tags: np.ndarray,
    recent_scores: np.ndarray | None,
    recent_tags: np.ndarray,
    *,
    psi_threshold: float = 0.25,
    js_threshold: float = 0.1,
    tag_threshold: float = 0.5,
) -> DriftReport:
    """Recent predictions against the reference (the model's test split at training). Drifted when the
    score PSI is over ``psi_threshold`` or a tag's JS divergence is over ``js_threshold``."""
    score_psi = (
        psi(reference_scores, recent_scores)
        if reference_scores is not None and recent_scores is not None
        else None
    )
    ref_rates, new_rates = tag_rates(reference_tags, tag_threshold), tag_rates(recent_tags, tag_threshold)
    js = bernoulli_js(new_rates, ref_rates)
    reasons = []
    if score_psi is not None and score_psi > psi_threshold:
        reasons.append(f"score PSI {score_psi:.3f} > {psi_threshold}")
    reasons += [
        f"tag {t!r} JS {d:.3f} > {js_threshold} (rate {r:.2f} -> {n:.2f})"
        for t, d, r, n in zip(tag_names, js, ref_rates, new_rates, strict=True)
        if d > js_threshold
    ]
    return DriftReport(
        score_psi,
        dict(zip(tag_names, map(float, ref_rates), strict=True)),
        dict(zip(tag_names, map(float, new_rates), strict=True)),
        dict(zip(tag_names, map(float, js), strict=True)),
        len(recent_tags),
        bool(reasons),
        reasons,
    )


# --- the reference: the model's own test-split predictions, logged at training ------------------------

# Where training logs it, in the run that registered the version (pipelines/train.py), and where the
# monitor (pipelines/monitor.py) reads it back: one contract, one owner.
REFERENCE_ARTIFACT = "reference/test_predictions.json"


@dataclass(frozen=True)
class Reference:
    tag_names: tuple[str, ...]
    score_unit: np.ndarray | None  # [N] normalised to the model's score range; None: tags-only model
    tag_probs: np.ndarray  # [N, K]


def reference_json(tag_names: tuple[str, ...], score_unit: np.ndarray | None, tag_probs: np.ndarray) -> str:
    """The test split's predictions as JSON (a few hundred KB for thousands of images)."""
    import json

    return json.dumps(
        {
            "tag_names": list(tag_names),
            "score_unit": None if score_unit is None else [round(float(s), 6) for s in score_unit],
            "tag_probs": np.round(np.asarray(tag_probs, float), 6).tolist(),
        }
    )


def parse_reference(text: str) -> Reference:
    import json

    raw = json.loads(text)
    names = tuple(raw["tag_names"])
    rows = raw["tag_probs"]
    # A score-only model's rows are empty lists: reshape(-1, 0) cannot infer their count.
    probs = np.asarray(rows, float).reshape(len(rows), len(names))
    scores = raw.get("score_unit")
    return Reference(names, None if scores is None else np.asarray(scores, float), probs)
