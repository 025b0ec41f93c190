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
