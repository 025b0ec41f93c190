import numpy as np
import pytest

from training import metrics


def test_rank_and_linear_correlation() -> None:
    true = np.array([0.1, 0.2, 0.3, 0.4])
    assert metrics.srocc(true**3, true) == pytest.approx(1.0)  # monotone: perfect rank agreement
    assert metrics.srocc(-true, true) == pytest.approx(-1.0)
    assert metrics.plcc(2 * true + 1, true) == pytest.approx(1.0)
    assert metrics.srocc(np.full(4, 0.5), true) == 0.0  # constant prediction: defined, not NaN


def test_mae() -> None:
    assert metrics.mae(np.array([0.0, 1.0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_average_precision_matches_hand_computed_value() -> None:
    # ranking: pos, neg, pos -> precisions at the hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    ap = metrics.average_precision(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1]))
    assert ap == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(metrics.average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_map_skips_tags_without_positives_and_micro_f1() -> None:
    probs = np.array([[0.9, 0.2], [0.1, 0.8]])
    labels = np.array([[1, 0], [0, 0]])
    assert metrics.mean_average_precision(probs, labels) == pytest.approx(1.0)
    # predictions at 0.5: (1,0),(0,1); tp=1, fp=1, fn=0 -> F1 = 2/3
    assert metrics.micro_f1(probs, labels) == pytest.approx(2 / 3)
    assert set(metrics.evaluate(probs[:, 0], probs[:, 0], probs, labels)) == {
        "score_srocc",
        "score_plcc",
        "score_mae",
        "tags_map",
        "tags_micro_f1",
    }


def test_score_metrics_use_only_labelled_images() -> None:
    true = np.array([0.1, np.nan, 0.3, 0.4, np.nan])
    pred = np.array([0.1, 0.9, 0.3, 0.4, 0.0])  # way off exactly where there is no label
    m = metrics.evaluate(pred, true, np.zeros((5, 0)), np.zeros((5, 0)))
    assert m == {"score_srocc": pytest.approx(1.0), "score_plcc": pytest.approx(1.0), "score_mae": 0.0}


def test_a_missing_head_or_missing_labels_leave_their_metrics_out() -> None:
    probs = np.array([[0.9], [0.1]])
    labels = np.array([[1], [0]])
    # A tags-only model: no score metrics, whether it passes None or its NaN scores.
    assert set(metrics.evaluate(None, np.array([0.2, 0.4]), probs, labels)) == {"tags_map", "tags_micro_f1"}
    assert set(metrics.evaluate(np.full(2, np.nan), np.array([0.2, 0.4]), probs, labels)) == {
        "tags_map",
        "tags_micro_f1",
    }
    # No score labels at all: nothing to compare against.
    assert "score_mae" not in metrics.evaluate(np.array([0.2, 0.4]), np.full(2, np.nan), probs, labels)
    # A score-only model (K = 0): no tag metrics, and no NaN anywhere.
    m = metrics.evaluate(np.array([0.2, 0.4]), np.array([0.2, 0.5]), np.zeros((2, 0)), np.zeros((2, 0)))
    assert set(m) == {"score_srocc", "score_plcc", "score_mae"}
    assert all(np.isfinite(v) for v in m.values())


def test_ap_by_tag_keeps_tags_with_positives() -> None:
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6]])
    labels = np.array([[1, 0, 0], [0, 0, 1]])
    assert metrics.ap_by_tag(probs, labels, ("cat", "dog", "sky")) == {"cat": 1.0, "sky": 1.0}


def test_metric_names_are_mlflow_safe_and_unique() -> None:
    keys = metrics.metric_names("test_ap_", ["b&w", "b?w", "sky", "50/50", "été"])
    assert keys == {
        "b&w": "test_ap_b_w",
        "b?w": "test_ap_b_w-2",
        "sky": "test_ap_sky",
        "50/50": "test_ap_50_50",
        "été": "test_ap_été",
    }
    from mlflow.utils.validation import _validate_metric_name

    for key in keys.values():
        _validate_metric_name(key)  # raises on a name MLflow would refuse
