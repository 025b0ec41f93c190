"""Feature extraction on Ray Data gives the features of the in-process extractor (the path it replaced:
decode, resize, FeatureExtractor in batches of 32 with this process's torch threads) to float32 rounding,
in the order asked, and names the files it could not read instead of returning zeros for them.

Why rounding and not bits: torch's CPU reductions split work by batch shape and thread count. Between
1 and 2 threads features differ by up to 8e-6 (the actors therefore run the driver's thread count); a
batch of 2 against one of 32 moves a few image statistics by one float32 step (measured 1.2e-7). The
in-process path had the same property: an image's bits depended on which batch it fell in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from photo_samples import jpeg, photo

from lightbox.feature_schema import FEATURE_DIM
from lightbox.imaging import decode_image, to_model_input
from lightbox.settings import Settings
from pipelines import features
from training.model import FeatureExtractor

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _in_process(paths: list[Path], max_pixels: int) -> np.ndarray:
    """What pipelines/features.extract computed before Ray Data, step for step."""
    x = torch.from_numpy(
        np.stack([to_model_input(decode_image(p.read_bytes(), max_pixels=max_pixels)) for p in paths])
    )
    with torch.inference_mode():
        extractor = FeatureExtractor().eval()
        return torch.cat([extractor(x[i : i + 32]) for i in range(0, len(x), 32)]).float().numpy()


def test_ray_features_equal_the_in_process_ones_and_bad_files_are_named(tmp_path: Path) -> None:
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(jpeg(photo(40 + i, (80 + 16 * i, 64))))
        paths.append(p)
    paths.append(paths[2])  # the same file twice: both rows filled
    settings = Settings(project_dir=tmp_path, ray_num_cpus=2, score_batch_size=3)

    got = features.extract(settings, paths, batch_size=2)

    assert got.shape == (8, FEATURE_DIM) and got.dtype == np.float32
    np.testing.assert_allclose(got, _in_process(paths, settings.max_pixels), rtol=0, atol=1e-6)

    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(features.FeaturesUnreadable, match=r"1 images could not be read: .*bad\.jpg"):
        features.extract(settings, [paths[0], tmp_path / "bad.jpg"])
    assert features.extract(settings, []).shape == (0, FEATURE_DIM)
