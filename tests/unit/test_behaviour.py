import numpy as np
import pandas as pd
import pytest

from lightbox.dataset import DEFECT_TAG
from lightbox.distortions import KINDS
from pipelines.behaviour import direction, invariance, lowers_score, minimum_functionality, parse_distortions


def _grid(score_at, tag_prob_at, sources=("s0", "s1")) -> pd.DataFrame:
    """A golden-like predictions table: pristine + every kind at levels 1..5 per source."""
    rows = []
    for s in sources:
        for kind, level in [("none", 0)] + [(k, lvl) for k in KINDS for lvl in range(1, 6)]:
            row = {"group": s, "kind": kind, "level": level, "score": score_at(s, kind, level)}
            for k, tag in DEFECT_TAG.items():
                row[f"p:{tag}"] = tag_prob_at(s, kind, level, k)
            rows.append(row)
    return pd.DataFrame(rows)


def _good_score(s, kind, level):
    return 1.0 - 0.15 * level


def _good_tags(s, kind, level, tag_kind):
    return 0.9 if (kind == tag_kind and level >= 4) else 0.05


def test_parse_distortions() -> None:
    assert parse_distortions("none") == ("none", 0)
    assert parse_distortions("blur:3") == ("blur", 3)
    with pytest.raises(ValueError, match="one distortion"):
        parse_distortions("blur:3+noise:2")


def test_invariance_reports_the_largest_move_and_each_offender() -> None:
    base = np.array([0.8, 0.5])
    r = invariance(base, {"resize": np.array([0.81, 0.5]), "jpeg": np.array([0.8, 0.4])}, ["a", "b"], 0.05)
    assert r.value == pytest.approx(0.1)
    assert r.cases == 4
    assert r.failures == ["b jpeg: moved 0.100"]


def test_direction_passes_a_monotone_model() -> None:
    r = direction(_grid(_good_score, _good_tags), slack=0.02, min_drop=0.05)
    assert r.value == 1.0 and r.cases == 8 and r.failures == []


def test_direction_fails_a_rise_beyond_slack_and_a_flat_model() -> None:
    def bumpy(s, kind, level):
        return 0.9 if (s == "s0" and kind == "blur" and level == 3) else 1.0 - 0.15 * level

    r = direction(_grid(bumpy, _good_tags), slack=0.02, min_drop=0.05)
    assert r.value == pytest.approx(7 / 8)
    assert r.failures[0].startswith("s0 blur: rises at level [3]")

    flat = direction(_grid(lambda s, k, lvl: 0.5, _good_tags), slack=0.02, min_drop=0.05)
    assert flat.value == 0.0 and "drops only 0.000" in flat.failures[0]


def test_minimum_functionality() -> None:
    good = minimum_functionality(_grid(_good_score, _good_tags), threshold=0.5)
    assert good.value == 1.0 and good.cases == 2 + 2 * len(KINDS)

    def noisy_everywhere(s, kind, level, tag_kind):
        return 0.9 if tag_kind == "noise" else _good_tags(s, kind, level, tag_kind)

    def blind_to_blur(s, kind, level, tag_kind):
        return 0.1 if tag_kind == "blur" else _good_tags(s, kind, level, tag_kind)

    r = minimum_functionality(_grid(_good_score, noisy_everywhere), threshold=0.5)
    assert r.failures == ["s0 pristine: tagged ['noisy']", "s1 pristine: tagged ['noisy']"]
    r = minimum_functionality(_grid(_good_score, blind_to_blur), threshold=0.5)
    assert r.value == pytest.approx(12 / 14)
    assert r.failures[0] == "s0 blur:5: blurry at 0.10 < 0.5"


def test_lowers_score_counts_the_images_whose_score_falls_enough() -> None:
    base = np.array([0.8, 0.6, 0.5])
    blurred = np.array([0.5, 0.58, 0.6])  # falls 0.3, falls 0.02, rises 0.1
    r = lowers_score(base, blurred, ["a", "b", "c"], min_drop=0.05)
    assert r.name == "blur_lowers_score_pass_rate"
    assert r.value == pytest.approx(1 / 3) and r.cases == 3
    assert r.failures == ["b: blur drops only 0.020", "c: blur drops only -0.100"]
    with pytest.raises(ValueError, match="2 scores for 3 images"):
        lowers_score(base, blurred[:2], ["a", "b", "c"], min_drop=0.05)
