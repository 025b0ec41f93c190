"""How the training stage reads a dataset through its label spec: the splits, the labels, the heads it
asks for, and the datasets it refuses (no MLflow, no Ray, no Feast: features are stubbed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lightbox import manifest
from lightbox.feature_schema import EMBEDDING_DIM, QUALITY_DIM, STAT_NAMES
from lightbox.manifest import LabelSpec
from lightbox.settings import Settings
from pipelines import train
from training.model import ModelConfig


def _row(i: int, split: str, score: str, tags: str) -> dict[str, str]:
    image_id = f"{i:016x}"
    return {
        "image_id": image_id,
        "path": f"images/{image_id}.jpg",
        "split": split,
        "group": f"g{i}",
        "score": score,
        "tags": tags,
        "width": "64",
        "height": "64",
        "phash": "0" * 16,
        "original": f"photo{i}.jpg",
    }


def _features(image_ids: Sequence[str]) -> pd.DataFrame:
    """Feature rows like pipelines.features.load_for_training's, the id encoded in the first value."""
    n = len(image_ids)
    frame = pd.DataFrame(
        {
            "image_id": list(image_ids),
            "embedding": [np.full(EMBEDDING_DIM, int(i, 16), np.float32) for i in image_ids],
            "quality": [np.zeros(QUALITY_DIM, np.float32)] * n,
        }
    )
    for name in STAT_NAMES:
        frame[name] = np.float32(0)
    return frame


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setattr(train, "load_for_training", lambda settings, ids: _features(ids))
    (tmp_path / "data").mkdir()
    return Settings(project_dir=tmp_path)


def _write(settings: Settings, rows: list[dict[str, str]], spec: LabelSpec) -> None:
    manifest.write_manifest(settings.data_dir, rows)
    manifest.write_label_spec(settings.data_dir, spec)


SPEC = LabelSpec(tag_counts={"cat": 2, "dog": 3, "rare": 1}, min_tag_count=2, score_range=(1.0, 10.0))


def test_splits_carry_normalised_scores_nan_where_unlabelled_and_the_kept_tags(settings: Settings) -> None:
    rows = [
        _row(1, "train", "1", "cat|dog"),
        _row(2, "train", "", "dog|rare"),  # no score label; "rare" is below min_tag_count
        _row(3, "train", "10", "cat"),
        _row(4, "validation", "5.5", "dog"),
        _row(5, "test", "", ""),
    ]
    _write(settings, rows, SPEC)
    data = train.load_training_data(settings)
    tr = data.splits["train"]
    # write_manifest sorts by image_id: rows 1, 2, 3 in that order.
    np.testing.assert_allclose(tr.score, [0.0, np.nan, 1.0])
    np.testing.assert_array_equal(tr.tags, [[1, 1], [0, 1], [1, 0]])  # columns: cat, dog
    assert [int(v) for v in tr.x[:, 0]] == [1, 2, 3]  # the features are those of the same images
    np.testing.assert_allclose(data.splits["validation"].score, [0.5])
    assert len(data.splits["test"]) == 1


def test_base_config_follows_the_label_spec() -> None:
    config = train.base_config(SPEC, epochs=7, seed=3)
    assert config.tag_names == ("cat", "dog") and config.has_score
    assert config.score_range == (1.0, 10.0) and (config.epochs, config.seed) == (7, 3)
    tags_only = train.base_config(LabelSpec(tag_counts={"cat": 9}), epochs=1, seed=0)
    assert not tags_only.has_score and tags_only.tag_names == ("cat",)


@pytest.mark.parametrize(
    ("rows", "spec", "message"),
    [
        (
            [_row(1, "train", "2", "cat|dog"), _row(2, "test", "3", "dog")],
            SPEC,
            "the validation split is empty",
        ),
        (
            [_row(1, "train", "2", "dog"), _row(2, "validation", "3", "cat"), _row(3, "test", "3", "cat")],
            SPEC,
            "no positive image in the train split: cat",
        ),
        (
            [_row(1, "train", "", "cat|dog"), _row(2, "validation", "3", "cat"), _row(3, "test", "3", "")],
            SPEC,
            "no train image has one",
        ),
        (
            [_row(1, "train", "", "cat"), _row(2, "validation", "", ""), _row(3, "test", "", "")],
            LabelSpec(tag_counts={"cat": 1}, min_tag_count=5),
            "nothing to train",
        ),
    ],
    ids=["empty-split", "tag-without-train-positive", "score-without-train-labels", "no-labels"],
)
def test_untrainable_datasets_are_refused_with_what_to_do(
    settings: Settings, rows: list[dict[str, str]], spec: LabelSpec, message: str
) -> None:
    _write(settings, rows, spec)
    with pytest.raises(train.NotTrainable, match=message) as refused:
        train.load_training_data(settings)
    # The CLI prints it as one line, exit 1 (it had printed a 51-line traceback of a bare ValueError).
    from lightbox.cli import known_error

    assert known_error(refused.value) == (str(refused.value), 1)


def test_excluded_tags_are_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    rows = [_row(1, "train", "2", "cat|dog"), _row(2, "validation", "3", "dog"), _row(3, "test", "4", "")]
    _write(settings, rows, SPEC)
    with caplog.at_level("WARNING", logger="pipelines.train"):
        train.load_training_data(settings)
    assert "left out of training: rare" in caplog.text


def test_test_metrics_are_fractions_of_the_range_plus_raw_mae_and_ap_per_tag() -> None:
    config = ModelConfig(tag_names=("b&w", "sky", "never"), score_low=1, score_high=10)
    test = train.Split(
        x=np.zeros((4, 1), np.float32),
        score=np.array([0.0, 0.5, np.nan, 1.0], np.float32),
        tags=np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], np.float32),
    )
    s_pred = np.array([0.1, 0.4, 0.9, 0.9], np.float32)  # off by 0.1 wherever labelled
    t_pred = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.7, 0.3, 0.3], [0.1, 0.6, 0.2]], np.float32)
    m = train.test_metrics(config, test, s_pred, t_pred)
    assert m["test_score_mae"] == pytest.approx(0.1, abs=1e-6)
    assert m["test_score_mae_raw"] == pytest.approx(0.9, abs=1e-5)
    assert m["test_ap_b_w"] == 1.0 and m["test_ap_sky"] == 1.0
    assert "test_ap_never" not in m  # no positive in test: no AP to report


def test_a_tags_only_model_reports_no_score_metrics() -> None:
    config = ModelConfig(tag_names=("cat",), has_score=False)
    test = train.Split(np.zeros((2, 1), np.float32), np.full(2, np.nan, np.float32), np.array([[1.0], [0.0]]))
    m = train.test_metrics(config, test, np.full(2, np.nan, np.float32), np.array([[0.8], [0.3]]))
    assert not any(k.startswith("test_score") for k in m) and m["test_tags_map"] == 1.0


@pytest.mark.parametrize("synthetic", [True, False])
def test_plots_follow_the_dataset(monkeypatch: pytest.MonkeyPatch, synthetic: bool) -> None:
    import mlflow

    logged: dict[str, object] = {}
    monkeypatch.setattr(mlflow, "log_figure", lambda fig, path: logged.__setitem__(path, fig))
    config = ModelConfig(tag_names=("cat", "dog"), score_low=1, score_high=10, score_name="aesthetic")
    rows = [_row(i, "test", "5", "cat") for i in range(6)]
    if synthetic:
        for r, d in zip(rows, ["none", "blur:1", "blur:3", "noise:2", "noise:4", "none"], strict=True):
            r["distortions"] = d
    rng = np.random.default_rng(0)
    split = train.Split(np.zeros((6, 1), np.float32), rng.random(6).astype(np.float32), np.eye(6, 2))
    extra = train._log_plots(config, rows, rng.random(6).astype(np.float32), rng.random((6, 2)), split)
    expected = {
        "plots/score_pred_vs_true.png",
        "plots/tags_pr_curves.png",
        "plots/tags_calibration.png",
        "plots/tags_ap_per_tag.png",
    }
    if synthetic:
        expected.add("plots/srocc_per_distortion.png")
    assert set(logged) == expected
    assert ("test_score_srocc_blur" in extra) is synthetic and "test_tags_ece" in extra
    scatter = logged["plots/score_pred_vs_true.png"].axes[0]  # type: ignore[attr-defined]
    assert scatter.get_xlim() == (1.0, 10.0) and scatter.get_xlabel() == "true aesthetic"
