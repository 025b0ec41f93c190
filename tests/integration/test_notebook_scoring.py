"""Scoring photos from a notebook: the registered model takes the server's uint8 tensor and answers an
unnamed one, so a data scientist could not hand it their photos (a DataFrame of paths, bytes: MLflow's
"Failed to enforce schema"). lightbox.notebook takes paths and bytes and answers named columns, with the
server's decode and loader; the version's description says how."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightbox import notebook
from lightbox.adapters import mlflow_registry
from lightbox.imaging import preprocess_bytes
from lightbox.settings import settings_env
from training.predictor import RegistryLoader

pytestmark = pytest.mark.integration


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_photos_score_as_the_server_scores_them(
    registered_champion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, version = registered_champion.settings, registered_champion.version
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(_jpeg(1))
    (tmp_path / "broken.jpg").write_bytes(_jpeg(2)[:300])
    frame = notebook.score_photos(
        [str(photo), _jpeg(3), tmp_path / "broken.jpg", tmp_path / "missing.jpg"],
        f"models:/{settings.model_name}@{settings.champion_alias}",
        threshold=0.0,
    )
    predictor = RegistryLoader(settings, settings.champion_alias).load()
    tags = list(predictor.tag_names)
    assert list(frame.columns) == ["photo", "score", "tags", *(f"p_{t}" for t in tags), "error", "model"]
    assert list(frame["photo"]) == [
        str(photo),
        "bytes[1]",
        str(tmp_path / "broken.jpg"),
        str(tmp_path / "missing.jpg"),
    ]
    scores, probs = predictor.predict(np.stack([preprocess_bytes(_jpeg(1)), preprocess_bytes(_jpeg(3))]))
    for i in (0, 1):
        assert frame["score"][i] == pytest.approx(float(scores[i]), abs=1e-5)
        assert [frame[f"p_{t}"][i] for t in tags] == pytest.approx(probs[i].tolist(), abs=1e-5)
        assert frame["tags"][i] == tags and frame["error"][i] is None  # threshold 0: every tag
    assert "Truncated" in frame["error"][2] and math.isnan(frame["score"][2])
    assert "No such file" in frame["error"][3]
    assert set(frame["model"]) == {f"models:/{settings.model_name}/{version}"}

    described = mlflow_registry.client(settings).get_model_version(settings.model_name, version).description
    assert f"lightbox.notebook.score_photos(paths, 'models:/{settings.model_name}/{version}')" in described
    assert f"tags [{', '.join(tags)}]" in described
