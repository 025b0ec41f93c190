"""The drift monitor's reference (what training logs) and the rows it compares, without MLflow."""

import numpy as np
import pytest

from lightbox.drift import parse_reference, reference_json
from pipelines.monitor import recent_from_rows

pytestmark = pytest.mark.unit


def test_the_reference_round_trips_for_scored_and_tags_only_models() -> None:
    probs = np.array([[0.25, 0.75], [0.5, 0.125]])
    ref = parse_reference(reference_json(("dog", "a, b"), np.array([0.1, 0.9]), probs))
    assert ref.tag_names == ("dog", "a, b")
    np.testing.assert_allclose(ref.tag_probs, probs)
    assert ref.score_unit is not None and ref.score_unit.tolist() == [0.1, 0.9]
    tags_only = parse_reference(reference_json(("x",), None, np.array([[0.3]])))
    assert tags_only.score_unit is None and tags_only.tag_probs.shape == (1, 1)
    none = parse_reference(reference_json((), np.array([0.5]), np.zeros((1, 0))))
    assert none.tag_probs.shape == (1, 0)  # a score-only model


def test_stored_rows_line_up_with_the_reference_tags() -> None:
    rows = [(7.5, {"sunset": 0.9, "dog": 0.2}), (None, {"dog": 0.6})]  # a tag missing from a row: 0
    recent = recent_from_rows(rows, ("dog", "sunset"), has_score=True)
    np.testing.assert_allclose(recent.tag_probs, [[0.2, 0.9], [0.6, 0.0]])
    assert recent.scores is not None and recent.scores[0] == 7.5 and np.isnan(recent.scores[1])
    assert recent_from_rows(rows, ("dog",), has_score=False).scores is None
