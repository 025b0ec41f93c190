"""Canary routing and shadow agreement (serving/canary.py): plain Python, no server."""

from __future__ import annotations

import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from scipy.stats import spearmanr

from serving.canary import Agreement, ShadowMetrics, canary_bucket, routes_to_challenger


@pytest.mark.parametrize("percent", [5.0, 20.0, 50.0])
def test_the_split_over_2000_keys_is_within_5_points(percent: float) -> None:
    keys = [f"user-{i}" for i in range(2000)]
    share = 100 * np.mean([routes_to_challenger(k, percent, "lightbox") for k in keys])
    assert abs(share - percent) < 5, share


def test_a_key_always_sees_the_same_model() -> None:
    for k in (f"user-{i}" for i in range(200)):
        first = routes_to_challenger(k, 30.0, "lightbox")
        assert all(routes_to_challenger(k, 30.0, "lightbox") == first for _ in range(5))
    # Raising the percentage only moves users to the challenger, never back.
    assert all(routes_to_challenger(k, 40.0) for k in map(str, range(500)) if routes_to_challenger(k, 20.0))
    assert 0 <= canary_bucket("x") < 100 and canary_bucket("x", "a") != canary_bucket("x", "b")


def test_without_a_key_each_request_draws_and_zero_sends_none() -> None:
    rng = random.Random(0)
    share = np.mean([routes_to_challenger(None, 25.0, rng=rng) for _ in range(2000)])
    assert abs(share - 0.25) < 0.05
    assert not any(routes_to_challenger(str(i), 0.0) for i in range(100))


def test_agreement_matches_a_direct_comparison() -> None:
    rng = np.random.default_rng(0)
    n = 300
    a = rng.random(n).astype(np.float32)
    b = (a + rng.normal(0, 0.1, n)).astype(np.float32)
    ta, tb = rng.random((n, 3)), rng.random((n, 2))
    # The challenger knows "dog" and "cat" (in another order); "bird" is the champion's alone.
    agreement = Agreement(("cat", "dog", "bird"), ("dog", "cat"), threshold=0.5, window=1000)
    for i in range(0, n, 7):  # requests of up to 7 images
        agreement.add(a[i : i + 7], b[i : i + 7], ta[i : i + 7], tb[i : i + 7])
    s = agreement.summary()
    assert s.samples == n
    assert s.score_srocc == pytest.approx(spearmanr(a, b).statistic, abs=1e-6)
    assert s.score_mae == pytest.approx(float(np.abs(a - b).mean()), abs=1e-6)
    assert set(s.tag_agreement) == {"cat", "dog"}
    assert s.tag_agreement["cat"] == pytest.approx(np.mean((ta[:, 0] >= 0.5) == (tb[:, 1] >= 0.5)))
    assert s.tag_agreement["dog"] == pytest.approx(np.mean((ta[:, 1] >= 0.5) == (tb[:, 0] >= 0.5)))
    tags = s.to_tags()
    assert tags["shadow.samples"] == "300" and float(tags["shadow.score_mae"]) == pytest.approx(
        s.score_mae, 1e-3
    )
    # The same numbers at the scrape.
    registry = CollectorRegistry()
    ShadowMetrics(registry, agreement.summary)
    assert registry.get_sample_value("lightbox_shadow_score_srocc") == pytest.approx(s.score_srocc)
    assert (
        registry.get_sample_value("lightbox_shadow_tag_agreement", {"tag": "dog"}) == s.tag_agreement["dog"]
    )


def test_the_window_keeps_the_latest_pairs() -> None:
    agreement = Agreement(("t",), ("t",), window=10)
    agreement.add(np.zeros(20), np.ones(20), np.zeros((20, 1)), np.ones((20, 1)))
    agreement.add(np.ones(5), np.ones(5), np.ones((5, 1)), np.ones((5, 1)))
    s = agreement.summary()
    assert s.samples == 10 and s.score_mae == pytest.approx(0.5) and s.tag_agreement["t"] == 0.5
    assert Agreement(("t",), ("t",)).summary().samples == 0
