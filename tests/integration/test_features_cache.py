"""Features are cached by content hash and feature version: an --append extracts only the new images,
and training reads features only for the images of the dataset it trains on, refusing missing ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from photo_samples import imagefolder

from lightbox import manifest
from lightbox.adapters import feast_store
from lightbox.feature_schema import FEATURE_VERSION
from lightbox.settings import Settings
from pipelines import features, importer
from pipelines.importer import ImportOptions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_append_extracts_only_new_images_and_training_refuses_missing_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(project_dir=tmp_path / "project", golden_fraction=0.0, min_tag_count=2)
    opts = ImportOptions(score_column="rating", tags_column="labels", score_range="1,10")
    importer.run(s, str(imagefolder(tmp_path / "a", 10)), opts)
    first = features.run(s)
    assert (first.n_computed, first.n_cached, first.feature_version) == (10, 0, FEATURE_VERSION)

    importer.run(
        s, str(imagefolder(tmp_path / "b", 3, start=50)), ImportOptions(**{**opts.__dict__, "append": True})
    )
    # Killed after writing the offline table, before materializing: the rerun has nothing to compute,
    # and must still fill the online store (it had left the new images out of it for good).
    with monkeypatch.context() as m:
        m.setattr(feast_store, "apply_and_materialize", _killed)
        with pytest.raises(KeyboardInterrupt):
            features.run(s)
    second = features.run(s)
    assert (second.n_images, second.n_computed, second.n_cached) == (13, 0, 13)
    ids = [r["image_id"] for r in manifest.read_manifest(s.data_dir)]
    online = feast_store.online(s, ids)
    assert [i for i, q in zip(ids, online["quality"], strict=True) if q is None] == []
    assert features.run(s).n_computed == 0  # nothing new: nothing extracted

    ids = [r["image_id"] for r in manifest.read_manifest(s.data_dir)]
    frame = features.load_for_training(s, ids)
    assert frame["image_id"].tolist() == ids and (frame["feature_version"] == FEATURE_VERSION).all()
    assert features.feature_matrix(frame).shape[0] == 13

    # Another extractor's rows are stale: recomputed by the feature stage, refused by training until then.
    table = feast_store.read_offline(s)
    assert table is not None
    table.loc[table["image_id"] == ids[0], "feature_version"] = "other-extractor/v0"
    feast_store.write_offline(s, table)
    feast_store.apply_and_materialize(s)
    with pytest.raises(features.FeaturesOutOfDate, match="1 have features of another extractor"):
        features.load_for_training(s, ids)
    assert features.run(s).n_computed == 1
    with pytest.raises(features.FeaturesOutOfDate, match="1 have no features.*lightbox features"):
        features.load_for_training(s, [*ids, "0123456789abcdef"])


def _killed(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt  # as a SIGKILL would stop it: before anything reaches the online store
