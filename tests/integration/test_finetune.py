"""Fine-tuning end to end on a tiny image set (CPU): a Tune trial improves the training loss and logs a
nested MLflow run; a killed run resumes exactly; a finished search started again repeats nothing; two
gloo data-parallel workers give what one process gives."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_samples import TAGS, tiny_images

from lightbox.settings import Settings
from training.finetune import FinetuneParams, Images, State, fine_tune, finetuned_config
from training.finetune_search import model_from_checkpoint, run_data_parallel, run_search
from training.fit import Split, fit_heads
from training.model import FeatureExtractor, LightboxModel, ModelConfig

pytestmark = pytest.mark.slow

# dropout 0: data-parallel workers draw their dropout masks in their own processes, so only a model
# without dropout can match one process bit for bit (the data order and augmentations do by design).
CONFIG = ModelConfig(tag_names=TAGS, dropout=0.0, hidden=64)
PARAMS = FinetuneParams(unfreeze_blocks=1, epochs=2, batch_size=8, head_lr=1e-3, aug_strength=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Images, Images]:
    root = tmp_path_factory.mktemp("finetune")
    return tiny_images(root / "train", 24), tiny_images(root / "val", 8, seed=1)


@pytest.fixture(scope="module")
def start(data: tuple[Images, Images]) -> LightboxModel:
    """The heads-only result: heads fitted on the frozen extractor's features, as pipelines/train does."""
    from pipelines.features import extract

    torch.set_num_threads(2)
    extractor = FeatureExtractor()
    train, _ = data
    x = extract(Settings(), list(train.paths), batch_size=8, extractor=extractor)
    heads = fit_heads(CONFIG, Split(x, train.score, train.tags), epochs=20)
    return LightboxModel(CONFIG, heads, extractor).eval()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


def _fresh(start: LightboxModel, params: FinetuneParams = PARAMS) -> LightboxModel:
    return LightboxModel(
        finetuned_config(start.config, params), copy.deepcopy(start.heads), copy.deepcopy(start.extractor)
    )


def test_a_trial_improves_the_training_loss_and_logs_a_nested_run(
    start: LightboxModel, data: tuple[Images, Images], ray_local: None, tmp_path: Path
) -> None:
    import mlflow
    from lightbox.adapters import mlflow_registry

    settings = Settings(project_dir=tmp_path)
    mlflow_registry.configure(settings)
    fixed = {"unfreeze_blocks": 1, "aug_ops": ("hflip", "crop"), "batch_size": 8, "head_lr": 1e-3}
    with mlflow.start_run(run_name="tune") as parent:
        ctx = {"settings": settings, "parent_run_id": parent.info.run_id, "tags": {"lightbox.stage": "trial"}}
        kwargs = dict(trials=1, epochs=2, storage=tmp_path / "ray", key="k1", fixed=fixed, mlflow_ctx=ctx)
        trials = run_search(start, *data, **kwargs)
        # The same search started again (a DAG retry after the search finished) restores, trains nothing.
        began = time.monotonic()
        again = run_search(start, *data, **kwargs)
        restored_s = time.monotonic() - began
    (trial,) = trials
    losses = trial.history.sort_values("epoch")["train_loss"].tolist()
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert [t.name for t in again] == [trial.name] and restored_s < 30

    client = mlflow_registry.client(settings)
    (run,) = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert run.info.status == "FINISHED" and trial.name.startswith(run.data.tags["ray.trial"])
    assert run.data.params["ft_unfreeze_blocks"] == "1" and run.data.params["feature_version"].endswith("+ft")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == [1, 2] and "val_score_srocc" in run.data.metrics
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)

    # What is registered carries its own extractor: the last block changed, the frozen first did not.
    assert trial.checkpoint is not None
    tuned = model_from_checkpoint(start, trial.params, trial.checkpoint)
    before, after = start.extractor.backbone, tuned.extractor.backbone
    assert not torch.equal(before._blocks[-1]._project_conv.weight, after._blocks[-1]._project_conv.weight)
    assert torch.equal(before._blocks[0]._project_conv.weight, after._blocks[0]._project_conv.weight)
    assert tuned.config.feature_version.endswith("+ft")


def test_a_run_killed_after_epoch_1_resumes_at_epoch_2_exactly(
    start: LightboxModel, data: tuple[Images, Images]
) -> None:
    train, val = data
    saved: list[State] = []

    class Killed(Exception):
        pass

    def kill_after_first(epoch: int, metrics: dict[str, float], state: State) -> None:
        saved.append(copy.deepcopy(state))
        raise Killed  # the process dies right after its epoch-1 checkpoint

    with pytest.raises(Killed):
        fine_tune(_fresh(start), PARAMS, train, val, report=kill_after_first)
    resumed = _fresh(start)
    rows = fine_tune(resumed, PARAMS, train, val, resume=saved[0])
    straight = _fresh(start)
    straight_rows = fine_tune(straight, PARAMS, train, val)
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert rows[1]["train_loss"] == pytest.approx(straight_rows[1]["train_loss"], rel=1e-5)
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_two_gloo_workers_equal_one_process(
    start: LightboxModel, data: tuple[Images, Images], ray_local: None, tmp_path: Path
) -> None:
    train, val = data
    params = FinetuneParams(unfreeze_blocks=1, epochs=1, batch_size=8, head_lr=1e-3)
    one = _fresh(start, params)
    one_rows = fine_tune(one, params, train, val)
    two, two_rows = run_data_parallel(start, params, train, val, world=2, storage=tmp_path, use_gpu=False)
    # Same global batch, same order and augmentations: only the gradient all-reduce's rounding differs.
    assert two_rows[-1]["val_loss"] == pytest.approx(one_rows[-1]["val_loss"], abs=1e-4)
    diffs = [
        float((a - b).abs().max())
        for a, b in zip(one.state_dict().values(), two.state_dict().values(), strict=True)
        if a.is_floating_point()
    ]
    assert max(diffs) < 1e-4, max(diffs)
    assert np.isfinite(two_rows[-1]["train_loss"])
