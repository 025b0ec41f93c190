"""Issue 14, drift: recent predictions of a served version against its own test split, through the
real registry, a bulk-scoring parquet folder and an MLflow report run.

The reference and both streams are the real model's answers on real photographs: random crops of
scikit-image's photos stand in for the training distribution; the shifted stream is the same kind of
crops, blurred (a camera out of focus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data

from lightbox import drift
from lightbox.adapters import mlflow_registry
from lightbox.imaging import to_model_input
from lightbox.results import ParquetSink, ScoreRow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "cat",
    "hubble_deep_field",
)
# 240 a stream: PSI's own noise over 10 bins is about 9 x (1/240 + 1/240) = 0.075, well under 0.25.
N = 240


def crops(seed: int, blur: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    out = []
    for i in range(N):
        img = photos[i % len(photos)]
        side = int(rng.integers(min(img.size) // 3, min(img.size)))
        x, y = (int(rng.integers(0, d - side + 1)) for d in img.size)
        crop = img.crop((x, y, x + side, y + side)).resize((256, 256))
        if blur:
            crop = crop.filter(ImageFilter.GaussianBlur(blur))
        out.append(to_model_input(crop))
    return np.stack(out)


def write_stream(folder: Path, predictor, images: np.ndarray) -> None:
    scores, probs = predictor.predict(images)
    sink = ParquetSink(folder)
    sink.write(
        [
            ScoreRow(
                uri=f"file:///catalog/{i}.jpg",
                image_id=f"{i:016x}",
                content_hash=f"{i:064x}",
                model_name=predictor.name,
                model_version=predictor.version,
                score=float(s),
                tag_probs=dict(zip(predictor.tag_names, map(float, p), strict=True)),
            )
            for i, (s, p) in enumerate(zip(scores, probs, strict=True))
        ]
    )


def test_drift_fires_on_blurred_photos_and_stays_quiet_on_the_training_distribution(
    registered_champion, tmp_path: Path
) -> None:
    import mlflow
    from pipelines import monitor
    from training.predictor import RegistryLoader

    settings, version = registered_champion.settings, registered_champion.version
    predictor = RegistryLoader(settings, settings.champion_alias, "cpu").load()
    # What training logs beside the model: its answers on the test split (here: crops of the photos).
    scores, probs = predictor.predict(crops(seed=0))
    mv = mlflow_registry.get_version(settings, version)
    mlflow_registry.configure(settings)
    mlflow.MlflowClient().log_text(
        mv.run_id, drift.reference_json(predictor.tag_names, scores, probs), drift.REFERENCE_ARTIFACT
    )

    quiet, shifted = tmp_path / "quiet", tmp_path / "blurred"
    write_stream(quiet, predictor, crops(seed=1))
    write_stream(shifted, predictor, crops(seed=2, blur=6.0))

    calm = monitor.run(settings, source=str(quiet))
    assert calm.recent_count == N and not calm.drifted, calm.reasons
    assert calm.metrics["score_psi"] < settings.monitor_psi_threshold

    moved = monitor.run(settings, source=str(shifted))
    assert moved.drifted and moved.metrics["score_psi"] > settings.monitor_psi_threshold
    assert any(r.startswith("score PSI") for r in moved.reasons), moved.reasons
    tags = mlflow_registry.get_version(settings, version).tags
    assert tags["monitor.drifted"] == "true" and tags["monitor.run_id"] == moved.run_id
    report = mlflow.MlflowClient().get_run(moved.run_id)
    assert report.data.tags["lightbox.kind"] == "monitor"
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(moved.run_id, "plots")}
    assert {"plots/score_distribution.png", "plots/tag_rates.png"} <= artifacts


def test_too_few_recent_predictions_measure_nothing(registered_champion, tmp_path: Path) -> None:
    from pipelines import monitor

    empty = tmp_path / "none"
    empty.mkdir()
    result = monitor.run(registered_champion.settings, source=str(empty))
    assert not result.drifted and result.recent_count == 0 and "no drift measured" in result.note
    (empty / "IMG_1.jpg").write_bytes(b"a photo, not results")  # the photos' folder given by mistake
    with pytest.raises(monitor.NoPredictions, match=r"holds no bulk-scoring results but 1 other files"):
        monitor.run(registered_champion.settings, source=str(empty))


def test_a_test_split_too_small_to_compare_with_is_a_note_not_a_traceback(
    registered_champion, tmp_path: Path
) -> None:
    """A small dataset's test split holds a handful of photos: no decile of it means anything."""
    import mlflow
    from pipelines import monitor
    from training.predictor import RegistryLoader

    settings, version = registered_champion.settings, registered_champion.version
    predictor = RegistryLoader(settings, settings.champion_alias, "cpu").load()
    photos = crops(seed=3)
    scores, probs = predictor.predict(photos[:2])
    mv = mlflow_registry.get_version(settings, version)
    mlflow_registry.configure(settings)
    mlflow.MlflowClient().log_text(
        mv.run_id, drift.reference_json(predictor.tag_names, scores, probs), drift.REFERENCE_ARTIFACT
    )
    recent = tmp_path / "recent"
    write_stream(recent, predictor, photos[: monitor.MIN_RECENT])
    result = monitor.run(settings, source=str(recent))
    assert not result.drifted and result.recent_count == monitor.MIN_RECENT
    assert "test split holds 2 predictions" in result.note and "no drift measured" in result.note
