"""The heads' training loop on synthetic features: what each kind of label spec trains, and how."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.fit import (
    MAX_POS_WEIGHT,
    Split,
    fit_heads,
    loss_fn,
    predict,
    tag_pos_weight,
    validation_metrics,
)
from training.metrics import srocc
from training.model import EMBEDDING_DIM, FEATURE_DIM, ModelConfig

QUALITY = EMBEDDING_DIM  # first quality column: what the default score head reads


def _data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features whose column QUALITY carries the score and columns 0/1 two tags; a few more columns are
    noise, the rest constant (as uninformative as noise, without needing thousands of images)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, FEATURE_DIM), np.float32)
    x[:, :4] = rng.normal(size=(n, 4))
    x[:, QUALITY : QUALITY + 4] = rng.normal(size=(n, 4))
    score = 1.0 / (1.0 + np.exp(-2.0 * x[:, QUALITY]))
    tags = np.stack([x[:, 0] > 0, x[:, 1] > 1.0], axis=1).astype(np.float32)  # the second is rare
    return x, score.astype(np.float32), tags


def _config(**kw: object) -> ModelConfig:
    return ModelConfig(**({"tag_names": ("common", "rare"), "hidden": 32, "epochs": 25, "lr": 3e-3} | kw))


def test_pos_weight_lifts_rare_tags_only_and_is_capped() -> None:
    tags = np.zeros((1000, 4), np.float32)
    tags[:500, 0] = 1  # balanced: no lift
    tags[:100, 1] = 1  # 1 in 10: sqrt(900/100) = 3
    tags[:2, 2] = 1  # 1 in 500: sqrt(998/2) ~ 22 -> the cap
    tags[:900, 3] = 1  # common: never weighted below 1
    w = tag_pos_weight(tags)
    np.testing.assert_allclose(w, [1.0, 3.0, MAX_POS_WEIGHT, 1.0], rtol=1e-6)
    assert w.dtype == np.float32


def test_pos_weight_changes_the_tag_loss() -> None:
    out = torch.zeros(4, 3)  # [score | 2 tags] logits 0: p = 0.5 everywhere
    tags = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    config = ModelConfig(tag_names=("a", "b"), has_score=False)
    plain = loss_fn(out, torch.full((4,), torch.nan), tags, config)
    weighted = loss_fn(out, torch.full((4,), torch.nan), tags, config, torch.tensor([3.0, 1.0]))
    # BCE at p = 0.5 is ln 2 per element; weighting one positive by 3 adds 2 ln 2 over 8 elements.
    assert float(plain) == pytest.approx(np.log(2))
    assert float(weighted) == pytest.approx(np.log(2) * (1 + 2 / 8))


def test_unlabelled_scores_are_masked_out_of_the_loss() -> None:
    config = ModelConfig(tag_names=())
    out = torch.tensor([[0.0], [2.0], [-1.0]])
    score = torch.tensor([0.5, torch.nan, torch.nan])
    loss = loss_fn(out, score, torch.zeros(3, 0), config)
    # Only row 0 counts: BCE(logit 0, target 0.5) = ln 2, not diluted by the unlabelled rows.
    assert float(loss) == pytest.approx(np.log(2))
    none = loss_fn(out, torch.full((3,), torch.nan), torch.zeros(3, 0), config)
    assert float(none) == 0.0  # a batch with no labelled row adds nothing, and no NaN


def test_tags_only_config_has_no_score_loss() -> None:
    config = ModelConfig(tag_names=("a",), has_score=False)
    out = torch.tensor([[torch.nan, 0.0]])  # what a tags-only head answers in column 0
    loss = loss_fn(out, torch.tensor([0.3]), torch.tensor([[1.0]]), config)
    assert float(loss) == pytest.approx(np.log(2))


def test_fit_learns_score_and_tags_with_half_the_scores_unlabelled() -> None:
    x, score, tags = _data()
    masked = score.copy()
    masked[::2] = np.nan  # every other training image has no score label
    train = Split(x, masked, tags)
    vx, vscore, vtags = _data(120, seed=1)
    heads = fit_heads(_config(), train)
    s, t = predict(heads, vx)
    assert srocc(s, vscore) > 0.8
    assert np.isfinite(s).all()
    m = validation_metrics(heads, Split(vx, vscore, vtags), _config())
    assert np.isfinite(m["loss"]) and m["tags_map"] > 0.7


def test_fit_reports_each_epoch() -> None:
    x, score, tags = _data(64)
    seen: list[int] = []
    fit_heads(
        _config(epochs=3), Split(x, score, tags), Split(x, score, tags), report=lambda e, m: seen.append(e)
    )
    assert seen == [1, 2, 3]


def test_tags_only_fit() -> None:
    x, _, tags = _data()
    config = _config(has_score=False)
    heads = fit_heads(config, Split(x, np.full(len(x), np.nan, np.float32), tags))
    assert heads.score is None
    s, t = predict(heads, x)
    assert np.isnan(s).all() and t.shape == (len(x), 2)
    m = validation_metrics(heads, Split(x, np.full(len(x), np.nan, np.float32), tags), config)
    assert "score_mae" not in m and m["tags_map"] > 0.7


def test_score_only_fit() -> None:
    x, score, _ = _data()
    config = _config(tag_names=())
    heads = fit_heads(config, Split(x, score, np.zeros((len(x), 0), np.float32)))
    assert heads.tags is None
    s, t = predict(heads, x)
    assert t.shape == (len(x), 0) and srocc(s, score) > 0.8
    m = validation_metrics(heads, Split(x, score, np.zeros((len(x), 0), np.float32)), config)
    assert "tags_map" not in m and m["score_mae"] < 0.2


def test_fit_refuses_labels_that_do_not_match_the_config() -> None:
    x, score, tags = _data(32)
    with pytest.raises(ValueError, match="tag columns"):
        fit_heads(_config(tag_names=("only",)), Split(x, score, tags))


def test_validation_loss_ignores_the_searched_tag_weight() -> None:
    x, score, tags = _data(64)
    heads = fit_heads(_config(epochs=1), Split(x, score, tags))
    split = Split(x, score, tags)
    small = validation_metrics(heads, split, _config(tag_loss_weight=0.5))["loss"]
    large = validation_metrics(heads, split, _config(tag_loss_weight=2.0))["loss"]
    assert small == pytest.approx(large)


def test_the_best_epoch_is_kept_not_the_last() -> None:
    """A validation split whose labels are the opposite of training's: its loss is lowest after the
    first epoch and rises from there, so the kept weights must be epoch 1's."""
    x, score, tags = _data(96)
    train = Split(x, score, tags)
    val = Split(x, 1.0 - score, 1.0 - tags)
    curve: list[dict[str, float]] = []
    kept = fit_heads(_config(epochs=12), train, val, log=curve)
    losses = [row["val_loss"] for row in curve]
    assert kept.best_epoch == 1 == int(np.argmin(losses)) + 1 and losses[-1] > losses[0]
    assert [row["epoch"] for row in curve] == list(range(1, 13)) and all("train_loss" in r for r in curve)
    first = fit_heads(_config(epochs=1), train)  # the same seed: the same first epoch
    for name, value in first.state_dict().items():
        assert torch.equal(value, kept.state_dict()[name]), name


def test_without_validation_the_last_epoch_is_kept() -> None:
    x, score, tags = _data(64)
    heads = fit_heads(_config(epochs=3), Split(x, score, tags))
    assert heads.best_epoch == 3
