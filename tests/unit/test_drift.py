"""Drift math (lightbox/drift.py): fires on a shifted stream, quiet on one from the reference."""

from __future__ import annotations

import numpy as np
import pytest

from lightbox.drift import bernoulli_js, compare, psi, tag_rates

TAGS = ("cat", "dog", "beach")


def stream(rng: np.random.Generator, n: int, score_mean: float = 0.5, rates=(0.3, 0.2, 0.1)):
    scores = np.clip(rng.normal(score_mean, 0.15, n), 0, 1)
    tags = (rng.random((n, len(rates))) < np.array(rates)).astype(float) * 0.9 + 0.05
    return scores, tags


def test_quiet_on_a_stream_from_the_reference() -> None:
    rng = np.random.default_rng(0)
    ref_s, ref_t = stream(rng, 2000)
    for _ in range(5):  # several independent recent windows, none fires
        new_s, new_t = stream(rng, 500)
        report = compare(TAGS, ref_s, ref_t, new_s, new_t)
        assert not report.drifted, report.reasons
        assert report.score_psi is not None and report.score_psi < 0.1


def test_fires_on_a_shifted_score() -> None:
    rng = np.random.default_rng(1)
    ref_s, ref_t = stream(rng, 2000)
    new_s, new_t = stream(rng, 500, score_mean=0.7)
    report = compare(TAGS, ref_s, ref_t, new_s, new_t)
    assert report.drifted and report.score_psi > 0.25
    assert report.reasons[0].startswith("score PSI")


def test_fires_on_a_tag_whose_rate_moved() -> None:
    rng = np.random.default_rng(2)
    ref_s, ref_t = stream(rng, 2000)
    new_s, new_t = stream(rng, 500, rates=(0.3, 0.2, 0.7))  # beach photos flood in
    report = compare(TAGS, ref_s, ref_t, new_s, new_t)
    assert report.drifted and [r.split()[1] for r in report.reasons] == ["'beach'"]
    assert report.metrics()["tag_rate_change.beach"] == pytest.approx(0.6, abs=0.06)


def test_the_pieces() -> None:
    x = np.linspace(0, 1, 1000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-9)
    assert psi(x, x + 0.5) > 1.0
    assert bernoulli_js(np.array([0.3]), np.array([0.3]))[0] == pytest.approx(0.0)
    assert bernoulli_js(np.array([0.0]), np.array([1.0]))[0] == pytest.approx(1.0)
    assert tag_rates(np.array([[0.9, 0.1], [0.6, 0.2]])).tolist() == [1.0, 0.0]
    # A tags-only model: no score, tags still compared.
    assert compare(("a",), None, np.zeros((10, 1)), None, np.ones((10, 1))).score_psi is None
    with pytest.raises(ValueError, match="reference"):
        psi(np.zeros(3), np.zeros(3))
