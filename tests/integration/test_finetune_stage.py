"""The train stage's fine-tune step (pipelines/train._fine_tune) on a tiny image set: the model it hands to
the log/register/gates path is fine-tuned, says so, and its metrics come from its own extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_samples import TAGS, tiny_images

from lightbox.feature_schema import FEATURE_DIM, FEATURE_VERSION
from lightbox.settings import Settings
from pipelines.train import TrainingData, _fine_tune
from training.fit import Split
from training.model import Heads, LightboxModel, ModelConfig

pytestmark = pytest.mark.slow


def test_the_stage_returns_a_finetuned_model_with_its_own_metrics(tmp_path: Path) -> None:
    import mlflow
    from lightbox.adapters import mlflow_registry

    settings = Settings(
        project_dir=tmp_path, finetune_trials=1, finetune_epochs=1, finetune_batch_size=8, ray_num_cpus=2
    )
    rows, splits = {}, {}
    for name, n, seed in (("train", 16, 0), ("validation", 8, 1), ("test", 8, 2)):
        images = tiny_images(settings.data_dir / name, n, seed=seed)
        rows[name] = [{"path": str(p.relative_to(settings.data_dir))} for p in images.paths]
        splits[name] = Split(np.zeros((n, FEATURE_DIM), np.float32), images.score, images.tags)
    # The label spec is not read by this step (the splits hold the parsed labels).
    data = TrainingData(rows=[], spec=None, splits=splits, split_rows=rows)  # type: ignore[arg-type]
    torch.manual_seed(0)
    config = ModelConfig(tag_names=TAGS)
    start = LightboxModel(config, Heads(config)).eval()
    mlflow_registry.configure(settings)
    with mlflow.start_run() as parent:
        model, metrics, s_pred, t_pred = _fine_tune(settings, start, data, "md5", parent.info.run_id, {})
        params = mlflow.get_run(parent.info.run_id).data.params
    assert model.config.feature_version == FEATURE_VERSION + "+ft"
    assert params["ft_feature_version"] == model.config.feature_version and "ft_unfreeze_blocks" in params
    assert {"test_score_srocc", "best_val_loss"} <= set(metrics) and s_pred.shape == (8,)
    assert not torch.equal(
        start.extractor.backbone._conv_head.weight, model.extractor.backbone._conv_head.weight
    )
