"""``load_predictor`` against a real MLflow registry (embedded SQLite store in a temp folder): the model
is logged the way the training pipeline logs it, the alias resolved, and the loaded model's answers
compared with the original's.
"""

from __future__ import annotations

from collections.abc import Iterator

import mlflow.pytorch
import numpy as np
import pytest
import torch

import mlflow
from lightbox.adapters import mlflow_registry
from lightbox.adapters.mlflow_registry import log_lightbox_model
from lightbox.dataset import TAG_VOCABULARY
from lightbox.manifest import LabelSpec
from lightbox.settings import Settings
from training.model import Heads, LightboxModel, ModelConfig
from training.predictor import ModelNotFound, RegistryLoader, load_predictor

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _log(
    settings: Settings,
    model: LightboxModel,
    tag_names: list[str] | None = None,
    fmt: str = "pt2",
    label_spec: dict | None = None,
) -> str:
    """Log and register ``model`` the way pipelines/train.py does (pt2, one-image example, metadata),
    and record its artifact digest as the gates would: loaders refuse a version nobody judged."""
    example = np.random.default_rng(0).integers(0, 255, (1, 3, 224, 224), dtype=np.uint8)
    with mlflow.start_run():
        version = log_lightbox_model(
            model,
            example,
            settings.model_name,
            serialization_format=fmt,
            tag_names=tag_names,
            label_spec=label_spec,
        )
    digest = mlflow_registry.version_digest(settings, version)
    mlflow_registry.set_version_tags(settings, version, digest.tags())
    return version


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[tuple[Settings, dict[str, LightboxModel]]]:
    root = tmp_path_factory.mktemp("registry")
    settings = Settings(project_dir=root)
    previous = mlflow.get_tracking_uri()
    mlflow_registry.configure(settings)  # the URIs and experiment that training uses
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    models = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = LightboxModel(config, Heads(config)).eval()
        models[_log(settings, model, list(TAG_VOCABULARY))] = model
    mlflow_registry.set_alias(settings, "1", settings.champion_alias)
    yield settings, models
    mlflow.set_tracking_uri(previous)


def test_load_predictor_resolves_the_champion(registry) -> None:
    settings, models = registry
    predictor = load_predictor(settings)
    assert (predictor.name, predictor.version) == ("lightbox", "1")
    assert predictor.tag_names == TAG_VOCABULARY
    # Three images: the logged pt2 graph is fixed to batch size 1; the rebuilt model is not.
    batch = np.random.default_rng(0).integers(0, 255, (3, 3, 224, 224), dtype=np.uint8)
    scores, probs = predictor.predict(batch)
    with torch.inference_mode():
        want = models["1"](torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(scores, want[:, 0], atol=1e-5)
    np.testing.assert_allclose(probs, want[:, 1:], atol=1e-5)


def test_loader_follows_the_alias(registry) -> None:
    settings, _ = registry
    loader = RegistryLoader(settings, "challenger")
    with pytest.raises(ModelNotFound, match="models:/lightbox@challenger"):
        loader.resolve()
    mlflow.MlflowClient(tracking_uri=settings.tracking_uri).set_registered_model_alias(
        "lightbox", "challenger", "2"
    )
    assert loader.resolve() == "2"
    assert load_predictor(settings, alias="challenger").version == "2"


def test_pickle_format_loads_too(registry, monkeypatch) -> None:
    settings, models = registry
    version = _log(settings, models["1"], fmt="pickle")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    predictor = RegistryLoader(settings, "unused").load(version)
    batch = np.zeros((2, 3, 224, 224), np.uint8)
    np.testing.assert_allclose(
        predictor.predict(batch)[0], load_predictor(settings).predict(batch)[0], atol=1e-5
    )


def test_mismatched_tag_metadata_is_refused(registry, monkeypatch) -> None:
    settings, models = registry
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    version = _log(settings, models["1"], list(reversed(TAG_VOCABULARY)), fmt="pickle")
    with pytest.raises(ValueError, match="metadata tag_names"):
        RegistryLoader(settings, "unused").load(version)
    # pt2: the heads are rebuilt from the metadata, so a wrong tag count cannot load silently.
    version = _log(settings, models["1"], list(TAG_VOCABULARY[:-1]))
    with pytest.raises(RuntimeError, match="size mismatch"):
        RegistryLoader(settings, "unused").load(version)


@pytest.mark.parametrize(
    ("config", "spec"),
    [
        (
            ModelConfig(tag_names=("cat", "sky, clear"), score_low=1, score_high=10, score_name="aesthetic"),
            LabelSpec(
                tag_counts={"cat": 8, "sky, clear": 6, "dog": 1}, score_name="aesthetic", score_range=(1, 10)
            ),
        ),
        (ModelConfig(tag_names=("cat",), has_score=False), LabelSpec(tag_counts={"cat": 8})),
        (
            ModelConfig(tag_names=(), score_features="all"),
            LabelSpec(score_name="quality", score_range=(0, 1)),
        ),
    ],
    ids=["scale-1-10", "tags-only", "score-only"],
)
def test_every_label_layout_logs_and_loads_back(registry, config: ModelConfig, spec: LabelSpec) -> None:
    settings, models = registry
    torch.manual_seed(3)
    # The extractor of a logged model: its weights are the pretrained ones whatever the heads are.
    model = LightboxModel(config, Heads(config), models["1"].extractor).eval()
    version = _log(settings, model, label_spec=spec.to_dict())
    metadata = mlflow_registry.model_metadata(settings, version)
    assert metadata["tag_names"] == list(config.tag_names)
    assert metadata["has_score"] is config.has_score
    assert metadata["score_range"] == (list(config.score_range) if config.has_score else None)
    assert LabelSpec.from_dict(metadata["label_spec"]) == spec

    loaded = mlflow_registry.load_model(settings, version)  # the adapter, as pipelines will call it
    assert loaded.config == config
    predictor = RegistryLoader(settings, "unused").load(version)
    assert predictor.has_score is config.has_score and predictor.score_range == config.score_range
    batch = np.random.default_rng(1).integers(0, 255, (2, 3, 224, 224), dtype=np.uint8)
    scores, probs = predictor.predict(batch)
    with torch.inference_mode():
        want = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(scores, want[:, 0], atol=1e-5)  # NaN == NaN for a tags-only model
    np.testing.assert_allclose(probs, want[:, 1:], atol=1e-5)
