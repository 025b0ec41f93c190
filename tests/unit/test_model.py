"""The feature extractor is the one the server runs: check it on real pictures, not shapes alone."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from lightbox.imaging import to_model_input
from lightbox.settings import TAG_VOCABULARY
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
    assert params["hidden"] == "64" and params["tag_names"].split(",") == list(TAG_VOCABULARY)
    import dataclasses

    assert ModelConfig.from_dict(dataclasses.asdict(config)) == config
