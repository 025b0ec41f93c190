"""What a logged model carries beside its weights, and how the registry adapter rebuilds it from that:
no MLflow server needed (the metadata is plain JSON-able data)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lightbox.adapters.mlflow_registry import as_lightbox_model, config_from_metadata, lightbox_metadata
from lightbox.manifest import LabelSpec
from training.model import FeatureExtractor, Heads, LightboxModel, ModelConfig


class _Graph(nn.Module):
    """What a pt2 load hands back: the same parameter names, none of the LightboxModel's attributes."""

    def __init__(self, model: LightboxModel) -> None:
        super().__init__()
        self.extractor, self.heads = model.extractor, model.heads


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    return FeatureExtractor()


def _model(config: ModelConfig, extractor: FeatureExtractor | None = None) -> LightboxModel:
    torch.manual_seed(0)
    # Metadata tests need no backbone weights: an identity stands in (the config is what is compared).
    return LightboxModel(config, Heads(config), extractor or FeatureExtractor(nn.Identity()))


def _through_storage(metadata: dict) -> dict:
    return json.loads(json.dumps(metadata))  # what the MLmodel file gives back: plain data


CONFIGS = [
    ModelConfig(
        tag_names=("b&w", "sky, clear"), score_low=1, score_high=10, score_name="aesthetic", hidden=64
    ),
    ModelConfig(tag_names=("cat", "dog"), has_score=False, score_features="all"),
    ModelConfig(tag_names=(), score_low=0, score_high=100, score_features="all", dropout=0.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["scale-1-10", "tags-only", "score-only"])
def test_config_round_trips_through_model_metadata(config: ModelConfig) -> None:
    metadata = _through_storage(lightbox_metadata(_model(config)))
    assert metadata["tag_names"] == list(config.tag_names)
    assert metadata["has_score"] is config.has_score
    assert metadata["score_range"] == (list(config.score_range) if config.score_range else None)
    assert metadata["score_name"] == (config.score_name if config.has_score else None)
    back = config_from_metadata(metadata, "models:/m/1")
    assert back == config
    assert back.has_score is config.has_score and isinstance(back.score_high, float)


def test_the_label_spec_travels_in_the_metadata() -> None:
    spec = LabelSpec(tag_counts={"cat": 9, "dog": 2}, score_name="aesthetic", score_range=(1.0, 10.0))
    config = ModelConfig(tag_names=spec.tags, score_low=1, score_high=10, score_name="aesthetic")
    metadata = _through_storage(lightbox_metadata(_model(config), spec.to_dict()))
    assert LabelSpec.from_dict(metadata["label_spec"]) == spec


@pytest.mark.parametrize("config", CONFIGS, ids=["scale-1-10", "tags-only", "score-only"])
def test_a_graph_is_rebuilt_into_the_eager_model(config: ModelConfig, extractor: FeatureExtractor) -> None:
    model = _model(config, extractor).eval()
    metadata = _through_storage(lightbox_metadata(model))
    rebuilt = as_lightbox_model(_Graph(model), metadata, "models:/m/1")
    assert isinstance(rebuilt, LightboxModel) and rebuilt.config == config
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model(x), equal_nan=True)


def test_metadata_of_a_model_before_label_specs_still_loads() -> None:
    """Versions logged before this change: comma-joined names in the params, no score fields."""
    old = {
        "tag_names": ["blurry", "noisy"],
        "model_config": {"tag_names": "blurry,noisy", "hidden": "128", "dropout": "0.1", "epochs": "30"},
    }
    config = config_from_metadata(old, "models:/m/1")
    assert config.tag_names == ("blurry", "noisy") and config.hidden == 128
    assert config.has_score and config.score_range == (0.0, 1.0) and config.score_features == "quality"


def test_metadata_that_contradicts_the_model_is_refused() -> None:
    model = _model(ModelConfig(tag_names=("a",), score_low=1, score_high=10))
    metadata = _through_storage(lightbox_metadata(model)) | {"score_range": [0.0, 1.0]}
    with pytest.raises(ValueError, match="score_range"):
        as_lightbox_model(model, metadata, "models:/m/1")
    with pytest.raises(ValueError, match="no model_config"):
        config_from_metadata({"tag_names": ["a"]}, "models:/m/1")
    bad = _through_storage(lightbox_metadata(model))
    bad["model_config"]["has_score"] = "perhaps"
    with pytest.raises(ValueError, match="models:/m/1.*not a boolean"):
        config_from_metadata(bad, "models:/m/1")
