"""The server's prediction metrics: score histogram on the model's own scale, per-tag rates, by version."""

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from serving.prediction_metrics import PredictionMetrics

pytestmark = pytest.mark.unit


def test_scores_are_binned_on_the_models_range_and_tags_counted_per_version() -> None:
    registry = CollectorRegistry()
    m = PredictionMetrics(registry, threshold=0.5)
    scores = np.array([1.0, 5.5, 10.0, np.nan], np.float32)  # a 1-10 rating; NaN is never binned
    probs = np.array([[0.9, 0.1], [0.6, 0.2], [0.4, 0.7], [0.5, 0.0]], np.float32)
    m.observe("3", ("dog", "sunset"), (1.0, 10.0), scores, probs)
    m.observe("4", ("dog", "sunset"), (1.0, 10.0), scores[:1], probs[:1])
    get = registry.get_sample_value
    assert get("lightbox_prediction_images_total", {"version": "3"}) == 4
    assert get("lightbox_prediction_score_unit_count", {"version": "3"}) == 3
    assert get("lightbox_prediction_score_unit_bucket", {"version": "3", "le": "0.1"}) == 1  # 1.0 -> 0
    assert get("lightbox_prediction_score_unit_bucket", {"version": "3", "le": "0.5"}) == 2  # 5.5 -> 0.5
    assert get("lightbox_prediction_tag_given_total", {"version": "3", "tag": "dog"}) == 3
    assert get("lightbox_prediction_tag_given_total", {"version": "3", "tag": "sunset"}) == 1
    assert get("lightbox_prediction_tag_given_total", {"version": "4", "tag": "dog"}) == 1


def test_a_tags_only_model_records_no_scores() -> None:
    registry = CollectorRegistry()
    PredictionMetrics(registry, 0.5).observe("1", ("a",), None, np.array([np.nan]), np.array([[0.8]]))
    assert registry.get_sample_value("lightbox_prediction_score_unit_count", {"version": "1"}) is None
    assert registry.get_sample_value("lightbox_prediction_tag_given_total", {"version": "1", "tag": "a"}) == 1
