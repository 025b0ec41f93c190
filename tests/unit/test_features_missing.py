"""Training before the features stage: one line saying which command to run, not Feast's traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightbox.settings import Settings
from pipelines.features import FeaturesOutOfDate, load_for_training

pytestmark = pytest.mark.unit


def test_training_data_before_any_features_says_to_run_the_features_stage(tmp_path: Path) -> None:
    """Imported, validated and versioned, but `lightbox features` never ran: Feast has no feature
    service yet (it had raised FeatureServiceNotFoundException through 106 lines)."""
    with pytest.raises(FeaturesOutOfDate, match=r"no features in Feast yet .*run `lightbox features`"):
        load_for_training(Settings(project_dir=tmp_path), ["0" * 64])
