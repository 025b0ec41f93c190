"""The Tune search space follows the heads the dataset has."""

from __future__ import annotations

import dataclasses

from lightbox.feature_schema import SCORE_FEATURE_GROUPS
from training.model import ModelConfig
from training.tune import search_space


def test_a_scored_dataset_searches_the_score_features() -> None:
    space = search_space(10, ModelConfig(tag_names=("cat",)))
    assert sorted(space["score_features"].categories) == sorted(SCORE_FEATURE_GROUPS)
    assert "tag_loss_weight" in space and space["epochs"] == 10


def test_one_head_searches_nothing_that_only_matters_with_the_other() -> None:
    tags_only = search_space(10, ModelConfig(tag_names=("cat",), has_score=False))
    assert "score_features" not in tags_only and "tag_loss_weight" not in tags_only
    score_only = search_space(10, ModelConfig(tag_names=()))
    assert "score_features" in score_only and "tag_loss_weight" not in score_only


def test_every_sampled_space_builds_a_config() -> None:
    base = ModelConfig(tag_names=("cat",))
    for _ in range(5):
        sample = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in search_space(10, base).items()}
        config = ModelConfig.from_dict(dataclasses.asdict(base) | sample)
        assert config.score_features in SCORE_FEATURE_GROUPS
