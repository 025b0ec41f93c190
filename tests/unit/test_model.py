"""The feature extractor is the one the server runs: check it on real pictures, not shapes alone."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from lightbox.dataset import TAG_VOCABULARY
from lightbox.imaging import to_model_input
from training.model import (
    EMBEDDING_DIM,
    FEATURE_DIM,
    STAT_NAMES,
    FeatureExtractor,
    Heads,
    LightboxModel,
    ModelConfig,
    image_stats,
    load_backbone,
    split_output,
)


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return load_backbone()


def _input(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(to_model_input(img))[None]


def test_pretrained_weights_recognise_the_bundled_photos(backbone: torch.nn.Module) -> None:
    batch = torch.cat([_input(Image.fromarray(data.chelsea())), _input(Image.fromarray(data.coffee()))])
    with torch.inference_mode():
        classes = backbone((batch.float() - 127.0) / 128.0).argmax(dim=1).tolist()
    assert classes == [285, 967]  # Egyptian cat, espresso


def test_stats_move_with_the_distortion() -> None:
    img = Image.fromarray(data.astronaut())
    stat = {n: i for i, n in enumerate(STAT_NAMES)}

    def stats(im: Image.Image) -> torch.Tensor:
        return image_stats(_input(im).float())[0]

    base = stats(img)
    blurred = stats(img.filter(ImageFilter.GaussianBlur(4)))
    dark = stats(img.point(lambda v: v // 4))
    rng = np.random.default_rng(0)
    noisy = stats(
        Image.fromarray(np.clip(np.asarray(img) + rng.normal(0, 25, (512, 512, 3)), 0, 255).astype(np.uint8))
    )
    assert blurred[stat["sharpness"]] < base[stat["sharpness"]]
    assert blurred[stat["detail_ratio"]] < base[stat["detail_ratio"]]
    assert dark[stat["brightness"]] < base[stat["brightness"]]
    assert dark[stat["luma_p98"]] < base[stat["luma_p98"]]
    assert noisy[stat["noise"]] > base[stat["noise"]] + 0.05


def test_model_outputs_score_and_tag_probabilities(backbone: torch.nn.Module) -> None:
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    model = LightboxModel(config, Heads(config), FeatureExtractor(backbone)).eval()
    x = torch.from_numpy(np.stack([to_model_input(Image.fromarray(data.rocket()))] * 3))
    with torch.inference_mode():
        feats = model.extractor(x)
        out = model(x)
    assert feats.shape == (3, FEATURE_DIM)
    assert torch.allclose(feats[0], feats[2])  # deterministic in eval mode
    scores, tags = split_output(out)
    assert scores.shape == (3,) and tags.shape == (3, len(TAG_VOCABULARY))
    assert ((out >= 0) & (out <= 1)).all()


def test_score_head_ignores_the_content_embedding() -> None:
    config = ModelConfig(tag_names=TAG_VOCABULARY)
    heads = Heads(config).eval()
    x = torch.randn(2, FEATURE_DIM)
    y = x.clone()
    y[:, :EMBEDDING_DIM] = torch.randn(2, EMBEDDING_DIM)
    with torch.inference_mode():
        assert torch.allclose(heads(x)[:, 0], heads(y)[:, 0])
        assert not torch.allclose(heads(x)[:, 1:], heads(y)[:, 1:])


def test_config_round_trips_through_params() -> None:
    config = ModelConfig(tag_names=TAG_VOCABULARY, hidden=64, lr=0.01)
    params = config.to_params()
    assert params["hidden"] == "64" and params["tag_names"].split("|") == list(TAG_VOCABULARY)
    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config
    assert ModelConfig.from_params(params) == config


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(tag_names=("b&w", "sky, clear"), score_low=1, score_high=10, score_name="aesthetic"),
        ModelConfig(tag_names=("cat",), has_score=False, score_features="all", dropout=0.3),
        ModelConfig(tag_names=(), score_low=-5.5, score_high=2.25),
    ],
    ids=["scale-1-10", "tags-only", "score-only"],
)
def test_label_fields_round_trip_through_param_strings(config: ModelConfig) -> None:
    params = config.to_params()
    assert all(isinstance(v, str) for v in params.values())
    back = ModelConfig.from_params(params)
    assert back == config
    # bool("False") is True: the tags-only flag must come back as False, the range as floats.
    assert back.has_score is config.has_score
    assert isinstance(back.score_low, float) and isinstance(back.score_high, float)


def test_config_refuses_what_no_model_can_be() -> None:
    with pytest.raises(ValueError, match="score or at least one tag"):
        ModelConfig(tag_names=(), has_score=False)
    with pytest.raises(ValueError, match="low < high"):
        ModelConfig(tag_names=("a",), score_low=10, score_high=1)
    with pytest.raises(ValueError, match="score_features"):
        ModelConfig(tag_names=("a",), score_features="embedding")
    with pytest.raises(ValueError, match="not a boolean"):
        ModelConfig.from_params({"tag_names": "a", "has_score": "maybe"})


def test_config_accepts_numpy_scalars_from_tune() -> None:
    config = ModelConfig.from_dict({"tag_names": ("a",), "hidden": np.int64(64), "lr": np.float64(0.01)})
    assert config.hidden == 64 and type(config.hidden) is int and config.lr == 0.01


def test_score_features_all_widens_the_score_head_and_reads_the_embedding() -> None:
    quality = Heads(ModelConfig(tag_names=("a",), hidden=8))
    everything = Heads(ModelConfig(tag_names=("a",), hidden=8, score_features="all"))
    assert quality.score is not None and everything.score is not None
    assert quality.score[0].in_features == FEATURE_DIM - EMBEDDING_DIM
    assert everything.score[0].in_features == FEATURE_DIM
    x = torch.randn(2, FEATURE_DIM)
    y = x.clone()
    y[:, :EMBEDDING_DIM] = torch.randn(2, EMBEDDING_DIM)
    with torch.inference_mode():
        assert not torch.allclose(everything.eval()(x)[:, 0], everything(y)[:, 0])


def _model(config: ModelConfig, backbone: torch.nn.Module) -> LightboxModel:
    torch.manual_seed(0)
    return LightboxModel(config, Heads(config), FeatureExtractor(backbone)).eval()


def _photos() -> torch.Tensor:
    imgs = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut()]
    return torch.from_numpy(np.stack([to_model_input(Image.fromarray(a)) for a in imgs]))


def test_a_1_to_10_model_answers_on_its_scale(backbone: torch.nn.Module) -> None:
    unit = _model(ModelConfig(tag_names=("a", "b")), backbone)
    ten = _model(ModelConfig(tag_names=("a", "b"), score_low=1, score_high=10), backbone)
    # Same weights (same seed): the scale is exactly the affine map of the [0, 1] score.
    ten.load_state_dict(unit.state_dict())
    x = _photos()
    with torch.inference_mode():
        u, t = unit(x), ten(x)
    assert ((t[:, 0] >= 1) & (t[:, 0] <= 10)).all()
    torch.testing.assert_close(t[:, 0], 1 + 9 * u[:, 0])
    torch.testing.assert_close(t[:, 1:], u[:, 1:])  # tag probabilities stay probabilities


def test_tags_only_model_answers_nan_scores_and_has_no_score_head(backbone: torch.nn.Module) -> None:
    model = _model(ModelConfig(tag_names=("a", "b", "c"), has_score=False), backbone)
    assert model.heads.score is None
    assert not any(k.startswith("heads.score") for k in model.state_dict())
    with torch.inference_mode():
        out = model(_photos())
    assert out.shape == (4, 4)
    assert torch.isnan(out[:, 0]).all()
    assert ((out[:, 1:] >= 0) & (out[:, 1:] <= 1)).all()


def test_score_only_model_has_one_output_column(backbone: torch.nn.Module) -> None:
    model = _model(ModelConfig(tag_names=()), backbone)
    assert model.heads.tags is None
    with torch.inference_mode():
        out = model(_photos())
    scores, tags = split_output(out)
    assert out.shape == (4, 1) and tags.shape == (4, 0)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_kth_smallest_is_the_sorted_rows_kth_value_at_every_rank(n: int) -> None:
    """The selection behind the order statistics (ONNX has no kthvalue) against the full sort, at every
    rank of odd and even rows, with ties."""
    from training.model import _kth_smallest

    g = torch.Generator().manual_seed(n)
    rows = torch.cat([torch.randint(0, 4, (3, n), generator=g).float(), torch.rand(3, n, generator=g)])
    ordered = rows.sort(dim=1).values
    for k in range(1, n + 1):
        assert torch.equal(_kth_smallest(rows, k), ordered[:, k - 1]), (n, k)
