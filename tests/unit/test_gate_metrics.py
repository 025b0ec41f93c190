import numpy as np
import pytest

from training.metrics import (
    calibration_bins,
    expected_calibration_error,
    precision_recall_points,
    srocc_by_kind,
)


def test_ece_is_zero_when_confidence_matches_frequency() -> None:
    # 10 predictions at 0.3 of which 3 positive, 10 at 0.8 of which 8 positive.
    probs = np.array([0.3] * 10 + [0.8] * 10)
    labels = np.array([1] * 3 + [0] * 7 + [1] * 8 + [0] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_ece_of_an_overconfident_model() -> None:
    probs = np.full(10, 0.9)
    labels = np.array([1] * 5 + [0] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    conf, rate, count = calibration_bins(probs, labels)
    assert count[8] == 10 and rate[8] == pytest.approx(0.5) and np.isnan(conf[0])


def test_ece_handles_matrices_and_rejects_mismatched_shapes() -> None:
    assert expected_calibration_error(np.zeros((4, 3)), np.zeros((4, 3))) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="differ in size"):
        calibration_bins(np.zeros(3), np.zeros(4))


def test_precision_recall_points() -> None:
    recall, precision = precision_recall_points(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1]))
    assert recall.tolist() == [0.5, 0.5, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert len(precision_recall_points(np.array([0.5]), np.array([0]))[0]) == 0


def test_srocc_by_kind_uses_pristine_as_anchor() -> None:
    dist = ["none", "none", "blur:1", "blur:5", "noise:2", "noise:4+blur:2"]
    true = np.array([1.0, 1.0, 0.9, 0.2, 0.76, 0.3])
    pred = np.array([0.9, 0.95, 0.8, 0.1, 0.2, 0.7])  # right on blur, wrong on noise
    out = srocc_by_kind(pred, true, dist)
    assert set(out) == {"blur", "noise"}
    assert out["blur"] > 0.7
    assert out["noise"] < out["blur"]


def test_plots_render_to_png() -> None:
    from training import plots

    rng = np.random.default_rng(0)
    probs, labels = rng.random((20, 3)), rng.random((20, 3)) > 0.5
    figs = [
        plots.score_scatter(rng.random(20), rng.random(20)),
        plots.srocc_by_kind({"blur": 0.8, "noise": -0.2}),
        plots.pr_curves(probs, labels, ("a", "b", "c")),
        plots.calibration(probs, labels, expected_calibration_error(probs, labels)),
        plots.ladders({"blur": {"s0": [1.0, 0.8, 0.5]}}),
    ]
    for fig in figs:
        assert plots.png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"
