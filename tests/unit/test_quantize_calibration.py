"""The images an int8 candidate is calibrated on (pipelines.quantize.calibration_images): the dataset's
train split through the serving decode, or a folder the user names; bad files skipped, never fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightbox.manifest import write_manifest
from lightbox.settings import Settings
from pipelines.quantize import QuantizeRefused, calibration_images

pytestmark = pytest.mark.unit


def _photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)


def _dataset(settings: Settings) -> None:
    rows = []
    for i, split in enumerate(["train", "test", "train", "train", "validation", "train"]):
        path = f"images/{i:016x}.png"
        _photo(settings.data_dir / path, i)
        rows.append({"image_id": f"{i:016x}", "path": path, "split": split, "group": str(i)})
    (settings.data_dir / "images" / f"{2:016x}.png").write_bytes(b"truncated")  # a bad train image
    write_manifest(settings.data_dir, rows)


def test_the_train_split_through_the_serving_decode_skipping_bad_files(tmp_path: Path) -> None:
    settings = Settings(project_dir=tmp_path, quantize_calibration_images=10)
    _dataset(settings)
    images = calibration_images(settings)
    # Train rows 0, 2, 3, 5; row 2 is unreadable: three images, in the model's input contract.
    assert images.shape == (3, 3, 224, 224) and images.dtype == np.uint8
    capped = calibration_images(settings.model_copy(update={"quantize_calibration_images": 2}))
    np.testing.assert_array_equal(capped, images[:2])


def test_a_folder_of_photos_or_a_clear_refusal(tmp_path: Path) -> None:
    settings = Settings(project_dir=tmp_path)
    with pytest.raises(QuantizeRefused, match="no dataset at .*lightbox data import.*--calibration"):
        calibration_images(settings)
    folder = tmp_path / "photos"
    _photo(folder / "a.jpg", 1)
    _photo(folder / "nested" / "b.png", 2)
    (folder / "notes.txt").write_text("not an image")
    assert calibration_images(settings, folder).shape == (2, 3, 224, 224)
    (folder / "a.jpg").write_bytes(b"")
    (folder / "nested" / "b.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(QuantizeRefused, match="no readable images in"):
        calibration_images(settings, folder)
    with pytest.raises(QuantizeRefused, match="not a folder"):
        calibration_images(settings, tmp_path / "missing")


def test_the_training_dag_quantizes_only_when_asked(tmp_path: Path) -> None:
    """The DAG's int8 param wins over settings.train_int8; unasked, the registry is not touched (this
    project has none: asking would fail on the missing version)."""
    from lightbox.adapters.mlflow_registry import VersionNotFound
    from pipelines.quantize import after_training

    off, on = Settings(project_dir=tmp_path), Settings(project_dir=tmp_path, train_int8=True)
    assert after_training(off, "1", None) is None
    assert after_training(on, "1", False) is None
    for settings, asked in ((on, None), (off, True)):
        with pytest.raises(VersionNotFound, match="does not exist"):
            after_training(settings, "1", asked)
