"""Pure parts of fine-tuning: the sampler's batches, what a fine-tuned config records, the search space."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightbox.feature_schema import FEATURE_VERSION
from training.finetune import EpochSampler, FinetuneParams, finetuned_config, precision_for
from training.finetune_search import params_from, search_key, search_space
from training.model import ModelConfig


def _batches(sampler: EpochSampler, size: int) -> list[list[int]]:
    items = [i for i, _ in sampler]
    return [items[k : k + size] for k in range(0, len(items), size)]


@pytest.mark.parametrize("world", [2, 4])
def test_every_ranks_local_batches_together_are_the_single_process_batches(world: int) -> None:
    one = EpochSampler(50, 8, seed=3)
    one.set_epoch(2)
    ranks = []
    for rank in range(world):
        s = EpochSampler(50, 8, seed=3, rank=rank, world=world)
        s.set_epoch(2)
        ranks.append(_batches(s, 8 // world))
    for k, batch in enumerate(_batches(one, 8)):
        assert sorted(sum((r[k] for r in ranks), [])) == sorted(batch)
    assert len(one) == 48  # whole global batches only


def test_epochs_reorder_and_evaluation_keeps_every_image_in_order() -> None:
    s = EpochSampler(20, 4, seed=0)
    first = [i for i, _ in s]
    s.set_epoch(2)
    assert [i for i, _ in s] != first and {e for _, e in s} == {2}
    assert [i for i, _ in EpochSampler(10, 4, seed=0, shuffle=False)] == list(range(10))
    with pytest.raises(ValueError, match="divide"):
        EpochSampler(10, 5, seed=0, world=2)


def test_a_finetuned_config_says_so_and_round_trips() -> None:
    base = ModelConfig(tag_names=("cat", "dog"))
    params = FinetuneParams(unfreeze_blocks=2, aug_ops=("hflip",))
    config = finetuned_config(base, params)
    assert config.feature_version == FEATURE_VERSION + "+ft"
    assert finetuned_config(config, params).feature_version == FEATURE_VERSION + "+ft"  # not "+ft+ft"
    back = ModelConfig.from_params(config.to_params() | {"ft_unfreeze_blocks": "2"})
    assert back.feature_version == config.feature_version
    assert config.to_params()["ft_unfreeze_blocks"] == "2" and config.to_params()["ft_aug_ops"] == "hflip"
    assert dataclasses.replace(config, extra={}) == dataclasses.replace(
        base, feature_version=config.feature_version
    )


def test_cpu_runs_fp32_without_a_scaler() -> None:
    p = precision_for(torch.device("cpu"))
    assert p.dtype is None and not p.scaled


def test_fixed_params_leave_the_space_and_win() -> None:
    space = search_space(3, {"unfreeze_blocks": 1})
    assert "unfreeze_blocks" not in space and {"backbone_lr_ratio", "aug_strength"} <= set(space)
    params = params_from({"aug_strength": 0.3, "epochs": 3, "unfreeze_blocks": 4}, {"unfreeze_blocks": 1})
    assert (params.unfreeze_blocks, params.aug_strength, params.epochs) == (1, 0.3, 3)


def test_the_search_key_is_stable_and_tells_searches_apart() -> None:
    a = search_key({"data": "md5a", "trials": 4})
    assert a == search_key({"trials": 4, "data": "md5a"}) and a != search_key({"data": "md5b", "trials": 4})


def test_bad_params_are_refused() -> None:
    with pytest.raises(ValueError):
        FinetuneParams(unfreeze_blocks=-1)
    with pytest.raises(ValueError, match="would change the label"):
        FinetuneParams(aug_ops=("blur",))
