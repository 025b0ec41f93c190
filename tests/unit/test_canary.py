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
    assert s.score_mae_unit == pytest.approx(float(np.abs(a - b).mean()), abs=1e-6)
    assert set(s.tag_agreement) == {"cat", "dog"} and s.tags_not_compared == ("bird",)
    assert s.tag_agreement["cat"] == pytest.approx(np.mean((ta[:, 0] >= 0.5) == (tb[:, 1] >= 0.5)))
    assert s.tag_agreement["dog"] == pytest.approx(np.mean((ta[:, 1] >= 0.5) == (tb[:, 0] >= 0.5)))
    tags = s.to_tags()
    assert tags["shadow.samples"] == "300" and float(tags["shadow.score_mae_unit"]) == pytest.approx(
        s.score_mae_unit, 1e-3
    )
    assert tags["shadow.tags_compared"] == "cat,dog" and tags["shadow.tags_not_compared"] == "bird"
    # The same numbers at the scrape.
    registry = CollectorRegistry()
    ShadowMetrics(registry, agreement.summary)
    assert registry.get_sample_value("lightbox_shadow_score_srocc") == pytest.approx(s.score_srocc)
    assert (
        registry.get_sample_value("lightbox_shadow_tag_agreement", {"tag": "dog"}) == s.tag_agreement["dog"]
    )


def test_an_undefined_srocc_is_not_recorded_as_zero() -> None:
    """The same image shadowed again and again: constant scores on both sides have no rank correlation.
    It is neither exported nor recorded as 0 (a promote floor of 0.8 would read total disagreement)."""
    agreement = Agreement(("t",), ("t",))
    agreement.add(np.full(10, 0.7), np.full(10, 0.7), np.ones((10, 1)), np.ones((10, 1)))
    s = agreement.summary()
    assert s.samples == 10 and s.score_srocc is None and s.score_mae_unit == 0.0
    tags = s.to_tags()
    assert "shadow.score_srocc" not in tags and tags["shadow.samples"] == "10"
    registry = CollectorRegistry()
    ShadowMetrics(registry, agreement.summary)
    assert np.isnan(registry.get_sample_value("lightbox_shadow_score_srocc"))


def test_the_window_keeps_the_latest_pairs() -> None:
    agreement = Agreement(("t",), ("t",), window=10)
    agreement.add(np.zeros(20), np.ones(20), np.zeros((20, 1)), np.ones((20, 1)))
    agreement.add(np.ones(5), np.ones(5), np.ones((5, 1)), np.ones((5, 1)))
    s = agreement.summary()
    assert s.samples == 10 and s.score_mae_unit == pytest.approx(0.5) and s.tag_agreement["t"] == 0.5
    assert Agreement(("t",), ("t",)).summary().samples == 0


def test_shadow_compares_scores_on_each_models_own_unit_scale(caplog) -> None:
    """A champion on 1..5 and a challenger on 0..10 that agree exactly: unit scale, no 2-point gap."""
    import asyncio
    from types import SimpleNamespace

    from serving.challenger import Challenger
    from serving.runtime import Prediction

    def predictor(version: str, tags: tuple[str, ...], score_range: tuple[float, float]) -> SimpleNamespace:
        return SimpleNamespace(version=version, tag_names=tags, score_range=score_range)

    champion = predictor("1", ("landscape", "portrait"), (1.0, 5.0))
    rival = predictor("2", ("blurry", "landscape", "people"), (0.0, 10.0))
    ticket = SimpleNamespace(release=lambda: None)
    probs = np.array([0.9, 0.1, 0.2], np.float32)

    async def infer(images, protocol, ticket):
        return [Prediction(10 * i / 3, probs, rival) for i in range(len(images))]

    runtime = SimpleNamespace(
        registry=CollectorRegistry(),
        predictor=rival,
        admission=SimpleNamespace(admit=lambda n: ticket),
        infer=infer,
    )
    model = SimpleNamespace(name="m@challenger", runtime=runtime)
    with caplog.at_level("WARNING", logger="serving.challenger"):
        challenger = Challenger(
            model, canary_percent=0, shadow_fraction=1, tag_threshold=0.5, champion_tags=champion.tag_names
        )
    answers = [Prediction(1 + 4 * i / 3, np.array([0.1, 0.9], np.float32), champion) for i in range(4)]
    asyncio.run(challenger._compare([np.zeros(1)] * 4, answers))
    s = challenger.agreement.summary()
    assert s.samples == 4 and s.score_mae_unit == pytest.approx(0.0, abs=1e-6) and s.score_srocc == 1.0
    assert s.tag_agreement == {"landscape": 1.0} and s.tags_not_compared == ("portrait", "blurry", "people")
    assert "not compared (one side only): [portrait, blurry, people]" in caplog.text
